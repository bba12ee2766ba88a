//go:build linux

package evloop

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fixture is a Server on a listener, with a handler that answers
// /img/N (N bytes) on the loop, /block/N off it (Blocked first), /file
// with sendfile from a file, /wait off the loop once release is closed,
// and hands everything else to a net/http fallback that names the target.
type fixture struct {
	srv      *Server
	ln       net.Listener
	file     *os.File
	fileData []byte
	release  chan struct{}
	waiting  chan struct{} // a /wait request is being answered
	handled  atomic.Int64  // answers made by the handler
	dones    atomic.Int64  // Done closes
	closed   atomic.Int64  // OnClose calls
	sndbuf   int           // when set, the accepted sockets' SO_SNDBUF
}

type doneCounter struct{ f *fixture }

func (d doneCounter) Close() error { d.f.dones.Add(1); return nil }

func body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

func newFixture(t *testing.T, opts Options, sndbuf ...int) *fixture {
	t.Helper()
	f := &fixture{release: make(chan struct{}), waiting: make(chan struct{}, 16)}
	if len(sndbuf) > 0 {
		f.sndbuf = sndbuf[0]
	}
	f.fileData = body(3 << 20)
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, append([]byte("0123456789"), f.fileData...), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.file, err = os.Open(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.file.Close() })
	h := func(req *Request, a *Answer, mayBlock bool) Result {
		target := string(req.Target)
		switch {
		case strings.HasPrefix(target, "/img/"), strings.HasPrefix(target, "/block/"):
			if strings.HasPrefix(target, "/block/") && !mayBlock {
				return Blocked
			}
			n, err := strconv.Atoi(target[strings.LastIndexByte(target, '/')+1:])
			if err != nil {
				return Declined
			}
			a.Status = http.StatusOK
			a.Header("Content-Type", []byte("application/octet-stream"))
			a.HeaderInt("Content-Length", int64(n))
			if !req.IsHead() {
				a.Body = body(n)
			}
			a.Done = doneCounter{f}
		case target == "/file":
			a.Status = http.StatusOK
			a.HeaderInt("Content-Length", int64(len(f.fileData)))
			a.SendFile(int(f.file.Fd()), 10, int64(len(f.fileData)))
			a.Done = doneCounter{f}
		case target == "/wait":
			if !mayBlock {
				return Blocked
			}
			f.waiting <- struct{}{}
			<-f.release
			a.Status = http.StatusOK
			a.HeaderInt("Content-Length", 4)
			a.Body = []byte("done")
		default:
			return Declined
		}
		f.handled.Add(1)
		return Answered
	}
	fallback := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Fallback", "yes")
		fmt.Fprintf(w, "fallback %s %s", r.Method, r.URL.Path)
	})
	opts.OnClose = func() { f.closed.Add(1) }
	if f.srv, err = New(h, fallback, opts); err != nil {
		t.Fatal(err)
	}
	f.ln = listenFor(t, f.srv, func(c net.Conn) {
		if f.sndbuf > 0 {
			c.(*net.TCPConn).SetWriteBuffer(f.sndbuf)
		}
	})
	return f
}

// dial connects to f, with a receive buffer of rcvbuf bytes when set.
func (f *fixture) dial(t *testing.T, rcvbuf int) net.Conn {
	t.Helper()
	return dialTest(t, f.ln.Addr().String(), rcvbuf)
}

// dialTest connects to addr, with a receive buffer of rcvbuf bytes when
// set, closes the connection when the test ends, and bounds it with a
// deadline.
func dialTest(t *testing.T, addr string, rcvbuf int) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A bound on a test that would otherwise hang, not a timing
	// assertion.
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

var answersRead int

func readAnswer(t *testing.T, br *bufio.Reader, method string) (*http.Response, []byte) {
	t.Helper()
	answersRead++
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading an answer after %d: %v", answersRead, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading a body: %v", err)
	}
	return resp, b
}

// waitEOF reads c to its end, failing if anything but the end comes.
func waitEOF(t *testing.T, br io.Reader) {
	t.Helper()
	b, err := io.ReadAll(br)
	if err != nil && !isReset(err) {
		t.Fatalf("want the connection closed, got %v", err)
	}
	if len(b) > 0 {
		t.Fatalf("want the connection closed, got %q", b)
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset") }

func TestPipelinedMixInOrder(t *testing.T) {
	f := newFixture(t, Options{Loops: 2})
	c := f.dial(t, 0)
	var reqs strings.Builder
	type want struct {
		method, body string
	}
	var wants []want
	for i := range 60 {
		switch i % 5 {
		case 0:
			fmt.Fprintf(&reqs, "GET /img/%d HTTP/1.1\r\nHost: x\r\n\r\n", 100+i)
			wants = append(wants, want{"GET", string(body(100 + i))})
		case 1:
			fmt.Fprintf(&reqs, "GET /block/%d HTTP/1.1\r\nHost: x\r\n\r\n", 200+i)
			wants = append(wants, want{"GET", string(body(200 + i))})
		case 2:
			fmt.Fprintf(&reqs, "GET /other/%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
			wants = append(wants, want{"GET", fmt.Sprintf("fallback GET /other/%d", i)})
		case 3:
			fmt.Fprintf(&reqs, "HEAD /img/%d HTTP/1.1\r\nHost: x\r\n\r\n", 300+i)
			wants = append(wants, want{"HEAD", ""})
		case 4:
			reqs.WriteString("GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
			wants = append(wants, want{"GET", string(f.fileData)})
		}
	}
	if _, err := io.WriteString(c, reqs.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i, w := range wants {
		resp, b := readAnswer(t, br, w.method)
		if resp.StatusCode != 200 || string(b) != w.body {
			t.Fatalf("answer %d (%s): %d, %d bytes; want 200 and %d bytes", i, w.method, resp.StatusCode, len(b), len(w.body))
		}
		if w.method == "HEAD" && resp.ContentLength != int64(300+i) {
			t.Errorf("HEAD answer %d: Content-Length %d, want %d", i, resp.ContentLength, 300+i)
		}
		if resp.Header.Get("Date") == "" {
			t.Errorf("answer %d has no Date", i)
		}
	}
	c.Close()
	f.srv.Shutdown(context.Background())
	if h, d := f.handled.Load(), f.dones.Load(); h != d {
		t.Errorf("%d answers with a Done, %d closed", h, d)
	}
}

func TestSendfilePartialToSlowReader(t *testing.T) {
	f := newFixture(t, Options{}, 16<<10)
	c := f.dial(t, 4<<10)
	// Two large answers and a small one between, pipelined: the second
	// waits behind the first, whose sendfile stops on a full socket.
	io.WriteString(c, "GET /file HTTP/1.1\r\nHost: x\r\n\r\nGET /img/10 HTTP/1.1\r\nHost: x\r\n\r\nGET /file HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReaderSize(&slowReader{r: c}, 1024)
	for i, want := range [][]byte{f.fileData, body(10), f.fileData} {
		_, b := readAnswer(t, br, "GET")
		if !bytes.Equal(b, want) {
			t.Fatalf("answer %d: %d bytes, not the %d wanted", i, len(b), len(want))
		}
	}
	c.Close()
	f.srv.Shutdown(context.Background())
	if d := f.dones.Load(); d != 3 {
		t.Errorf("%d Done closes, want 3", d)
	}
}

// slowReader reads at most 1 KiB at a time, pausing now and then.
type slowReader struct {
	r io.Reader
	n int
}

func (s *slowReader) Read(p []byte) (int, error) {
	s.n++
	if s.n%64 == 0 {
		time.Sleep(time.Millisecond)
	}
	return s.r.Read(p[:min(len(p), 1024)])
}

func TestFloodFromClientThatNeverReads(t *testing.T) {
	const maxQueued = 128 << 10
	f := newFixture(t, Options{MaxQueued: maxQueued, WriteTimeout: 200 * time.Millisecond}, 8<<10)
	c := f.dial(t, 4<<10)
	// Far more requests than can be answered without the client reading.
	req := "GET /img/65536 HTTP/1.1\r\nHost: x\r\n\r\n"
	flood := strings.Repeat(req, 20000)
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	io.WriteString(c, flood) // may stop on a full socket: the server stops reading
	// The write timeout ends the connection; until then, the answers made
	// are bounded by what may be queued and what the sockets hold.
	for f.closed.Load() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	bound := int64((maxQueued+(8<<10)*2+(4<<10)*2)/65536 + 3)
	if h := f.handled.Load(); h > bound {
		t.Errorf("%d answers made for a client that reads none, want at most %d", h, bound)
	}
	if h, d := f.handled.Load(), f.dones.Load(); h != d {
		t.Errorf("%d answers made, %d released", h, d)
	}
}

func TestSlowlorisClosed(t *testing.T) {
	f := newFixture(t, Options{ReadHeaderTimeout: 100 * time.Millisecond})
	c := f.dial(t, 0)
	io.WriteString(c, "GET /img/1 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	waitEOF(t, c)
}

func TestSilentConnectionClosed(t *testing.T) {
	// A connection that never sends a request is closed after the
	// read-header timeout, not the (long) idle timeout.
	f := newFixture(t, Options{ReadHeaderTimeout: 100 * time.Millisecond, IdleTimeout: time.Hour})
	waitEOF(t, f.dial(t, 0))
}

func TestIdleClosed(t *testing.T) {
	f := newFixture(t, Options{IdleTimeout: 100 * time.Millisecond})
	c := f.dial(t, 0)
	io.WriteString(c, "GET /img/5 HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	readAnswer(t, br, "GET")
	waitEOF(t, br)
}

func TestHeadersTooLarge(t *testing.T) {
	f := newFixture(t, Options{MaxHeaderBytes: 4096})
	for _, req := range []string{
		"GET /img/5 HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 8000) + "\r\n\r\n",
		"GET /img/5 HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Many: 1\r\n", 120) + "\r\n",
	} {
		c := f.dial(t, 0)
		io.WriteString(c, req)
		br := bufio.NewReader(c)
		resp, b := readAnswer(t, br, "GET")
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || !resp.Close ||
			resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(string(b), `"error"`) {
			t.Errorf("%d %v %q, want a 431 JSON error that closes", resp.StatusCode, resp.Header, b)
		}
		waitEOF(t, br)
	}
}

func TestMalformedAndBodies(t *testing.T) {
	f := newFixture(t, Options{})
	for _, tc := range []struct {
		req  string
		code int
	}{
		{"GARBAGE\r\n\r\n", 400},
		{"GET /img/5 HTTP/1.1\r\n\r\n", 400}, // no Host
		{"GET /img/5 HTTP/2.0\r\nHost: x\r\n\r\n", 505},
		{"GET /img/5 HTTP/1.1\r\nHost: x\r\nExpect: x\r\n\r\n", 417},
		{"\r\nGET /img/5 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"GET /img/5 HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400},
		{"GET /img/5 HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400},
		{"GET /img/5 HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", 400},
		{"POST /img/5 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 413},
		{"POST /img/5 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 413},
	} {
		c := f.dial(t, 0)
		io.WriteString(c, tc.req)
		br := bufio.NewReader(c)
		resp, b := readAnswer(t, br, "GET")
		if resp.StatusCode != tc.code || !resp.Close || !strings.HasPrefix(string(b), `{"error":"`) {
			t.Errorf("%q: %d close=%v %q, want %d with a JSON error, closing", tc.req, resp.StatusCode, resp.Close, b, tc.code)
		}
		waitEOF(t, br)
	}
}

func TestConnectionSemantics(t *testing.T) {
	f := newFixture(t, Options{})
	// HTTP/1.0: closed after the answer, with an HTTP/1.0 status line.
	c := f.dial(t, 0)
	io.WriteString(c, "GET /img/7 HTTP/1.0\r\n\r\n")
	br := bufio.NewReader(c)
	resp, b := readAnswer(t, br, "GET")
	if resp.ProtoMinor != 0 || string(b) != string(body(7)) || resp.Header.Get("Connection") != "" {
		t.Errorf("HTTP/1.0: %s %v %q", resp.Proto, resp.Header, b)
	}
	waitEOF(t, br)
	// HTTP/1.0 with keep-alive: kept, and said so.
	c = f.dial(t, 0)
	io.WriteString(c, "GET /img/7 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /other HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
	br = bufio.NewReader(c)
	for range 2 {
		resp, _ = readAnswer(t, br, "GET")
		if resp.Header.Get("Connection") != "keep-alive" {
			t.Errorf("HTTP/1.0 keep-alive: Connection %q", resp.Header.Get("Connection"))
		}
	}
	// Connection: close on HTTP/1.1, for the loop's and the fallback's
	// answers: the last answer says so, and nothing after it is read.
	for _, target := range []string{"/img/3", "/other", "/block/3"} {
		c = f.dial(t, 0)
		fmt.Fprintf(c, "GET /img/2 HTTP/1.1\r\nHost: x\r\n\r\nGET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /img/4 HTTP/1.1\r\nHost: x\r\n\r\n", target)
		br = bufio.NewReader(c)
		if resp, _ = readAnswer(t, br, "GET"); resp.Close {
			t.Errorf("%s: the first answer closes", target)
		}
		if resp, _ = readAnswer(t, br, "GET"); !resp.Close {
			t.Errorf("%s: the answer to Connection: close does not say it closes", target)
		}
		waitEOF(t, br)
	}
	// HEAD: the length, no body (the next answer follows at once).
	c = f.dial(t, 0)
	io.WriteString(c, "HEAD /img/9 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /other HTTP/1.1\r\nHost: x\r\n\r\nGET /img/1 HTTP/1.1\r\nHost: x\r\n\r\n")
	br = bufio.NewReader(c)
	if resp, b = readAnswer(t, br, "HEAD"); resp.ContentLength != 9 || len(b) != 0 {
		t.Errorf("HEAD: Content-Length %d, %d body bytes", resp.ContentLength, len(b))
	}
	if resp, b = readAnswer(t, br, "HEAD"); resp.Header.Get("X-Fallback") != "yes" || len(b) != 0 {
		t.Errorf("fallback HEAD: %v, %d body bytes", resp.Header, len(b))
	}
	if _, b = readAnswer(t, br, "GET"); string(b) != "a" {
		t.Errorf("after the HEADs: %q", b)
	}
}

func TestShutdownDrains(t *testing.T) {
	f := newFixture(t, Options{})
	busy := f.dial(t, 0)
	idle := f.dial(t, 0)
	io.WriteString(idle, "GET /img/1 HTTP/1.1\r\nHost: x\r\n\r\n")
	ibr := bufio.NewReader(idle)
	readAnswer(t, ibr, "GET")
	io.WriteString(busy, "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
	<-f.waiting
	f.ln.Close()
	var shut sync.WaitGroup
	var err error
	shut.Go(func() { err = f.srv.Shutdown(context.Background()) })
	waitEOF(t, ibr) // the idle connection is closed at once
	close(f.release)
	resp, b := readAnswer(t, bufio.NewReader(busy), "GET")
	if string(b) != "done" || !resp.Close {
		t.Errorf("the answer in flight: %q, close=%v; want it whole, closing", b, resp.Close)
	}
	shut.Wait()
	if err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if n := f.closed.Load(); n != 2 {
		t.Errorf("%d connections ended, want 2", n)
	}
}

func TestShutdownCutsWhenOutOfTime(t *testing.T) {
	f := newFixture(t, Options{})
	c := f.dial(t, 0)
	io.WriteString(c, "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
	<-f.waiting
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- f.srv.Shutdown(ctx) }()
	waitEOF(t, c) // cut without its answer
	close(f.release)
	if err := <-done; err == nil {
		t.Error("Shutdown out of time returned nil")
	}
	if n := f.closed.Load(); n != 1 {
		t.Errorf("%d connections ended, want 1", n)
	}
}

func TestHalfClosedClient(t *testing.T) {
	f := newFixture(t, Options{})
	c := f.dial(t, 0)
	// Two requests and the client's end in one go: both are answered,
	// then the connection closes (not after the idle timeout).
	io.WriteString(c, "GET /img/3 HTTP/1.1\r\nHost: x\r\n\r\nGET /block/4 HTTP/1.1\r\nHost: x\r\n\r\n")
	c.(*net.TCPConn).CloseWrite()
	br := bufio.NewReader(c)
	for _, want := range []string{"abc", "abcd"} {
		if _, b := readAnswer(t, br, "GET"); string(b) != want {
			t.Fatalf("got %q, want %q", b, want)
		}
	}
	waitEOF(t, br)
}

// TestIdleLoopsWaitInNetpoller checks that an idle loop waits parked in
// Go's netpoller ("IO wait"), not in a blocking epoll_wait system call,
// which would hold a P until sysmon took it back and so delay the
// goroutines that answer off the loops.
func TestIdleLoopsWaitInNetpoller(t *testing.T) {
	f := newFixture(t, Options{Loops: 2})
	c := f.dial(t, 0)
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "GET /img/10 HTTP/1.1\r\nHost: x\r\n\r\n")
	readAnswer(t, br, "GET")
	var last string
	for range 500 {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		parked, inSyscall := 0, 0
		for g := range strings.SplitSeq(stacks, "\n\n") {
			if !strings.Contains(g, "evloop.(*loop).run") {
				continue
			}
			first, _, _ := strings.Cut(g, "\n")
			switch {
			case strings.Contains(first, "[IO wait"):
				parked++
			case strings.Contains(first, "[syscall"):
				inSyscall++
			}
			last = first
		}
		if inSyscall > 0 {
			t.Fatalf("an idle loop waits in a system call: %s", last)
		}
		if parked == 2 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the idle loops were never seen parked in the netpoller; last state: %q", last)
}
