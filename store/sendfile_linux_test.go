package store

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
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

// corkOf reads TCP_CORK of the socket under rc.
func corkOf(t *testing.T, rc syscall.RawConn) int {
	t.Helper()
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// TestSendBodyCorks: a sendfile answer corks the socket for its headers
// and uncorks it once the body is sent (or, when the body is never sent,
// when the request closes its read buffer); the bytes the client gets are
// the headers and then exactly the file's range.
func TestSendBodyCorks(t *testing.T) {
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
	rc := rawConn(server)
	if rc == nil {
		t.Fatal("no raw access to a TCP connection")
	}
	if corkOf(t, rc) != 0 {
		t.Fatal("a new connection is corked")
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
	s.cork()
	if corkOf(t, rc) != 1 || !s.corked {
		t.Fatal("cork did not set TCP_CORK")
	}
	if _, err := server.Write([]byte("HEADERS\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	n, err := s.WriteTo(io.Discard)
	if err != nil || n != int64(len(body)) {
		t.Fatalf("WriteTo: %d bytes, %v; want %d", n, err, len(body))
	}
	if corkOf(t, rc) != 0 || s.corked {
		t.Fatal("the socket is still corked after the body was sent")
	}
	if b := <-got; !bytes.Equal(b, append([]byte("HEADERS\r\n\r\n"), body...)) {
		t.Fatalf("the client got %d bytes, not the headers and the body", len(b))
	}

	// The body never sent: the read buffer's close uncorks.
	rb := &readBuf{pool: &sync.Pool{}}
	rb.send = sendBody{conn: rc, fd: int(f.Fd()), n: 1}
	rb.send.cork()
	if corkOf(t, rc) != 1 {
		t.Fatal("cork did not set TCP_CORK")
	}
	rb.Close()
	if corkOf(t, rc) != 0 {
		t.Fatal("the socket is still corked after the request closed its read buffer")
	}

	// A failed sendfile (the file ends early) uncorks too.
	s = sendBody{conn: rc, fd: int(f.Fd()), off: int64(len("superblock") + len(body) - 10), n: 20}
	s.cork()
	if _, err := s.WriteTo(io.Discard); err == nil {
		t.Fatal("a body past the end of the file was sent")
	}
	if corkOf(t, rc) != 0 {
		t.Fatal("the socket is still corked after a failed sendfile")
	}
}

// BenchmarkSendBodyCork measures a 400 KB sendfile answer over loopback
// (headers written, then the body with sendfile; a client reads both),
// with the socket corked around it and without.
func BenchmarkSendBodyCork(b *testing.B) {
	body := make([]byte, 400<<10)
	path := filepath.Join(b.TempDir(), "dat")
	if err := os.WriteFile(path, body, 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	hdr := bytes.Repeat([]byte("h"), 300)
	for _, c := range []struct {
		name string
		cork bool
	}{{"plain", false}, {"cork", true}} {
		b.Run(c.name, func(b *testing.B) {
			server, client := tcpPair(b)
			rc := rawConn(server)
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 256<<10)
				want := int64(len(hdr) + len(body))
				for {
					var got int64
					for got < want {
						n, err := client.Read(buf)
						if err != nil {
							return
						}
						got += int64(n)
					}
					// One answer read: ask for the next.
					if _, err := client.Write([]byte{1}); err != nil {
						return
					}
				}
			}()
			ack := []byte{0}
			b.SetBytes(int64(len(body)))
			segs0, cpu0 := segsOut(b, rc), cpuTime(b)
			for b.Loop() {
				s := sendBody{conn: rc, fd: int(f.Fd()), n: int64(len(body))}
				if c.cork {
					s.cork()
				}
				if _, err := server.Write(hdr); err != nil {
					b.Fatal(err)
				}
				if _, err := s.WriteTo(io.Discard); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(server, ack); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(segsOut(b, rc)-segs0)/float64(b.N), "segs/op")
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
			server.Close()
			<-done
		})
	}
}

// cpuTime returns the process's user and system CPU time so far, in
// nanoseconds (the client's reads included: on loopback the sender pays
// for the receiver's work too).
func cpuTime(t testing.TB) int64 {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// segsOut returns how many segments the socket under rc has sent
// (tcpi_segs_out).
func segsOut(t testing.TB, rc syscall.RawConn) uint32 {
	t.Helper()
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) { info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return info.Segs_out
}
