package store

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/haybale/haybale/internal/serve"
	"github.com/haybale/haybale/store/volume"
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

	var cut atomic.Int64
	s := sendBody{conn: rc, fd: int(f.Fd()), off: int64(len("superblock")), n: int64(len(body)), ref: &volume.Ref{}, cut: &cut}
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
	s = sendBody{conn: rc, fd: int(f.Fd()), off: int64(len("superblock") + len(body) - 10), n: 20, ref: &volume.Ref{}, cut: &cut}
	if n, err := s.WriteTo(io.Discard); err == nil {
		t.Fatalf("a body past the end of the file was sent (%d bytes) without an error", n)
	}
	if cut.Load() != 0 {
		t.Fatalf("%d answers counted cut short for want of a proof, want 0", cut.Load())
	}

	// The bytes are no longer proven: nothing is sent, and the answer is
	// counted.
	s = sendBody{conn: rc, fd: int(f.Fd()), off: int64(len("superblock")), n: int64(len(body)), ref: unproven{}, cut: &cut}
	if n, err := s.WriteTo(io.Discard); n != 0 || !errors.Is(err, serve.ErrUnverified) || cut.Load() != 1 {
		t.Fatalf("an unproven body: %d bytes sent, %v, %d counted; want none sent, serve.ErrUnverified, 1 counted", n, err, cut.Load())
	}
}

// unproven is a proof that always fails.
type unproven struct{}

func (unproven) StillVerified() bool { return false }
