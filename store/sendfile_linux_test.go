package store

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/serve"
	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (server, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted net.Conn
	var aerr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		accepted, aerr = ln.Accept()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if aerr != nil {
		t.Fatal(aerr)
	}
	t.Cleanup(func() { accepted.Close(); c.Close() })
	return accepted.(*net.TCPConn), c.(*net.TCPConn)
}

// TestSendBody: a sendfile answer delivers the headers written before it
// and then exactly the file's range; a range past the end of the file is
// an error, never a short answer taken for a whole one.
func TestSendBody(t *testing.T) {
	body := make([]byte, 300<<10)
	for i := range body {
		body[i] = byte(i * 7)
	}
	path := filepath.Join(t.TempDir(), "dat")
	if err := os.WriteFile(path, append([]byte("superblock"), body...), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	server, client := tcpPair(t)
	rc := serve.RawTCP(server)
	if rc == nil {
		t.Fatal("no raw access to a TCP connection")
	}
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, 0, len(body)+100)
		buf := make([]byte, 64<<10)
		for len(b) < len("HEADERS\r\n\r\n")+len(body) {
			n, err := client.Read(buf)
			b = append(b, buf[:n]...)
			if err != nil {
				break
			}
		}
		got <- b
	}()

	s := sendBody{conn: rc, fd: int(f.Fd()), off: int64(len("superblock")), n: int64(len(body))}
	if _, err := server.Write([]byte("HEADERS\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	n, err := s.WriteTo(io.Discard)
	if err != nil || n != int64(len(body)) {
		t.Fatalf("WriteTo: %d bytes, %v; want %d", n, err, len(body))
	}
	if b := <-got; !bytes.Equal(b, append([]byte("HEADERS\r\n\r\n"), body...)) {
		t.Fatalf("the client got %d bytes, not the headers and the body", len(b))
	}

	// The file ends early.
	s = sendBody{conn: rc, fd: int(f.Fd()), off: int64(len("superblock") + len(body) - 10), n: 20}
	if n, err := s.WriteTo(io.Discard); err == nil {
		t.Fatalf("a body past the end of the file was sent (%d bytes) without an error", n)
	}
}

// TestLargeAnswerHeadersShareSegments: the headers of an answer sent with
// sendfile leave with MSG_MORE, so they share the body's first segment
// instead of a segment of their own: the client receives the answer in
// fewer data segments than the body alone needs plus one.
func TestLargeAnswerHeadersShareSegments(t *testing.T) {
	ts := startServer(t, Options{Dir: t.TempDir(), FS: vfs.Default}, ServerOptions{})
	ts.allocate(t, 1)
	p := randomPhoto(rand.New(rand.NewPCG(5, 6)), 1, 0x78, 10<<10) // l: 80 KiB
	ts.writePhoto(t, p)
	body := p.data[needle.SizeLarge]
	if len(body) < sendfileMin {
		t.Fatalf("the test wants a large image of %d bytes or more", sendfileMin)
	}
	before := scrapeCounter(t, ts.base, "haybale_store_http_bytes_sendfile_total")

	// A receive window wide enough for a whole answer, so that the
	// segments are cut by their size alone.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<20)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", ts.srv.HTTPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info := func() *unix.TCPInfo {
		var in *unix.TCPInfo
		var ierr error
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err == nil {
			err = rc.Control(func(fd uintptr) {
				in, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			})
		}
		if err != nil || ierr != nil {
			t.Fatal(err, ierr)
		}
		return in
	}
	br := bufio.NewReader(c)
	get := func() (segs uint32) {
		in0 := info()
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: store\r\n\r\n", needle.ImagePath(p.id, needle.SizeLarge, "jpg")); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(b, body) {
			t.Fatalf("status %d, %d bytes (want %d), err %v", resp.StatusCode, len(b), len(body), err)
		}
		return info().Data_segs_in - in0.Data_segs_in
	}
	for range 3 {
		get() // the connection's windows open
	}
	segs := get()
	// The largest segment the loopback link carries: headers in a
	// segment of their own would make the answer arrive in at least one
	// more than the body alone fills at that size.
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skip("no loopback interface named lo:", err)
	}
	mss := lo.MTU - 40 // IPv4 and TCP headers
	alone := 1 + (len(body)+mss-1)/mss
	if sent := scrapeCounter(t, ts.base, "haybale_store_http_bytes_sendfile_total") - before; sent != float64(4*len(body)) {
		t.Fatalf("%.0f bytes sent with sendfile, want the four answers' %d", sent, 4*len(body))
	}
	if int(segs) >= alone {
		t.Errorf("an answer of %d body bytes arrived in %d segments, as many as with the headers alone in one (%d)", len(body), segs, alone)
	}
}
