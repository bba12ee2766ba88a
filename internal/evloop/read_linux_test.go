//go:build linux

package evloop

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/vfs"
)

// readFixture is a Server whose handler answers /read/OFF/N with the N
// bytes at OFF of a file, read by the loop (Answer.Read) where it can and
// off the loop (Blocked) where it cannot; /again/OFF/N the same, but its
// ReadDone sends it off the loop (Blocked), where it is read with pread;
// /pipe with what is written into a pipe (a read that stays in flight
// until the test writes); /panic with a ReadDone that panics; /img/N with
// N bytes on the loop; /stray returns Pending on the loop without taking a
// read, and is answered off the loop. /two/OFF1/N1/OFF2/N2 answers the
// two ranges joined, read by the loop with one Reads of two reads where
// it can (off the loop with pread where it cannot, or where a read
// failed); /pipes the five bytes written into each of two pipes, read by
// one Reads of two reads that stay in flight until the test writes, and
// "off" off the loop.
type readFixture struct {
	srv   *Server
	ln    net.Listener
	data  []byte
	fd    int
	pr    *os.File // the pipe's read end, read by /pipe
	pw    *os.File
	pr2   *os.File // a second pipe, read by /pipes with pr
	pw2   *os.File
	many  atomic.Int64 // of taken, requests of two reads
	taken atomic.Int64 // reads the loop took
	dones atomic.Int64 // ReadDone calls
	off   atomic.Int64 // answers made off the loop
	freed atomic.Int64 // answers' Done closes
	made  atomic.Int64 // answers with a Done
	ended atomic.Int64 // connections ended
}

type freeCounter struct{ f *readFixture }

func (c freeCounter) Close() error { c.f.freed.Add(1); return nil }

func newReadFixture(t *testing.T) *readFixture {
	t.Helper()
	f := &readFixture{data: body(1 << 20)}
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, f.data, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.fd = fd
	if f.pr, f.pw, err = os.Pipe(); err != nil {
		t.Fatal(err)
	}
	if f.pr2, f.pw2, err = os.Pipe(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd); f.pr.Close(); f.pw.Close(); f.pr2.Close(); f.pw2.Close() })
	answer := func(a *Answer, b []byte) Result {
		a.Status = http.StatusOK
		a.HeaderInt("Content-Length", int64(len(b)))
		a.Body = b
		a.Done = freeCounter{f}
		f.made.Add(1)
		return Answered
	}
	// takeReads has the loop make reads for one request (Answer.Reads),
	// answering b once each read filled its buffer, off the loop
	// (Blocked) when one did not.
	takeReads := func(a *Answer, reads []FileRead, b []byte) Result {
		if !a.Reads(reads, func(a *Answer, res []ReadResult) Result {
			f.dones.Add(1)
			if len(res) != len(reads) {
				panic(fmt.Sprintf("%d results for %d reads", len(res), len(reads)))
			}
			for i, r := range res {
				if r.Err != nil || r.N != len(reads[i].Buf) {
					return Blocked
				}
			}
			return answer(a, b)
		}) {
			return Blocked
		}
		f.taken.Add(1)
		f.many.Add(1)
		return Pending
	}
	h := func(req *Request, a *Answer, mayBlock bool) Result {
		target := string(req.Target)
		parts := strings.Split(target, "/")
		switch {
		case parts[1] == "img" && len(parts) == 3:
			n, _ := strconv.Atoi(parts[2])
			return answer(a, body(n))
		case (parts[1] == "read" || parts[1] == "again") && len(parts) == 4:
			off, _ := strconv.Atoi(parts[2])
			n, _ := strconv.Atoi(parts[3])
			b := make([]byte, n)
			if mayBlock {
				f.off.Add(1)
				got, err := syscall.Pread(f.fd, b, int64(off))
				if err != nil {
					return Declined
				}
				return answer(a, b[:got])
			}
			again := parts[1] == "again"
			if !a.Read(f.fd, b, int64(off), func(a *Answer, got int, err error) Result {
				f.dones.Add(1)
				if err != nil || again {
					return Blocked
				}
				return answer(a, b[:got])
			}) {
				return Blocked
			}
			f.taken.Add(1)
			return Pending
		case parts[1] == "two" && len(parts) == 6:
			var off, n [2]int
			for i := range 2 {
				off[i], _ = strconv.Atoi(parts[2+2*i])
				n[i], _ = strconv.Atoi(parts[3+2*i])
			}
			b := make([]byte, n[0]+n[1])
			bs := [2][]byte{b[:n[0]], b[n[0]:]}
			if mayBlock {
				f.off.Add(1)
				for i := range 2 {
					if _, err := syscall.Pread(f.fd, bs[i], int64(off[i])); err != nil {
						return Declined
					}
				}
				return answer(a, b)
			}
			return takeReads(a, []FileRead{{FD: f.fd, Buf: bs[0], Off: int64(off[0])}, {FD: f.fd, Buf: bs[1], Off: int64(off[1])}}, b)
		case target == "/pipes":
			if mayBlock {
				f.off.Add(1)
				return answer(a, []byte("off"))
			}
			b := make([]byte, 10)
			return takeReads(a, []FileRead{{FD: int(f.pr.Fd()), Buf: b[:5]}, {FD: int(f.pr2.Fd()), Buf: b[5:]}}, b)
		case target == "/stray":
			if mayBlock {
				f.off.Add(1)
				return answer(a, []byte("off"))
			}
			return Pending
		case target == "/pipe", target == "/panic":
			if mayBlock {
				return Declined
			}
			b := make([]byte, 5)
			if !a.Read(int(f.pr.Fd()), b, 0, func(a *Answer, got int, err error) Result {
				f.dones.Add(1)
				if target == "/panic" {
					panic("ReadDone")
				}
				return answer(a, b[:got])
			}) {
				return Declined
			}
			f.taken.Add(1)
			return Pending
		}
		return Declined
	}
	fallback := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "fallback", http.StatusNotFound)
	})
	if f.srv, err = New(h, fallback, Options{Loops: 1, OnClose: func() { f.ended.Add(1) }}); err != nil {
		t.Fatal(err)
	}
	f.ln = listenFor(t, f.srv, nil)
	// Cleanups run last first: the pipe closes before the server shuts
	// down, so a pipe read still in flight ends (no hang on a failure).
	t.Cleanup(func() { f.pw.Close(); f.pw2.Close() })
	return f
}

func (f *readFixture) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", f.ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second)) // a bound on a hang, not a timing assertion
	return c
}

// waitFor polls cond, failing after 20 s (a bound on a hang).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s", what)
		}
	}
}

// ringOn skips the test where the system has no io_uring.
func ringOn(t *testing.T) {
	r, err := vfs.NewLoopRing(1)
	if err != nil {
		t.Skip(err)
	}
	r.Close(nil)
}

// TestLoopReadsInOrder: pipelined requests whose reads the loop makes
// itself (one read, or two for one request), between answers made on the
// loop and answers a ReadDone sends off the loop, are answered in order
// with the file's bytes; each request whose reads were taken gets its
// ReadDone (or ReadsDone) once, and every answer's Done is closed once.
func TestLoopReadsInOrder(t *testing.T) {
	ringOn(t)
	f := newReadFixture(t)
	c := f.dial(t)
	var reqs strings.Builder
	var wants [][]byte
	reads, agains := 0, 0
	for i := range 120 {
		off, n := i*4099%(len(f.data)-70000), 100+i*500
		switch i % 4 {
		case 3:
			off2, n2 := (i*7919+3)%(len(f.data)-70000), 50+i*300
			fmt.Fprintf(&reqs, "GET /two/%d/%d/%d/%d HTTP/1.1\r\nHost: x\r\n\r\n", off, n, off2, n2)
			wants = append(wants, append(append([]byte(nil), f.data[off:off+n]...), f.data[off2:off2+n2]...))
			reads++
		case 0:
			fmt.Fprintf(&reqs, "GET /read/%d/%d HTTP/1.1\r\nHost: x\r\n\r\n", off, n)
			wants = append(wants, f.data[off:off+n])
			reads++
		case 1:
			fmt.Fprintf(&reqs, "GET /img/%d HTTP/1.1\r\nHost: x\r\n\r\n", n)
			wants = append(wants, body(n))
		case 2:
			fmt.Fprintf(&reqs, "GET /again/%d/%d HTTP/1.1\r\nHost: x\r\n\r\n", off, n)
			wants = append(wants, f.data[off:off+n])
			agains++
		}
	}
	// A read past the end of the file is short, as pread's.
	fmt.Fprintf(&reqs, "GET /read/%d/%d HTTP/1.1\r\nHost: x\r\n\r\n", len(f.data)-10, 100)
	wants = append(wants, f.data[len(f.data)-10:])
	reads++
	if _, err := io.WriteString(c, reqs.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i, want := range wants {
		resp, b := readAnswer(t, br, "GET")
		if resp.StatusCode != 200 || !bytes.Equal(b, want) {
			t.Fatalf("answer %d: %d, %d bytes; want 200 and %d bytes", i, resp.StatusCode, len(b), len(want))
		}
	}
	if f.many.Load() != 30 {
		t.Fatalf("%d requests of two reads taken by the loop, want 30", f.many.Load())
	}
	if got := f.taken.Load(); got != int64(reads+agains) {
		t.Fatalf("%d reads taken by the loop, want %d", got, reads+agains)
	}
	if got := f.dones.Load(); got != f.taken.Load() {
		t.Fatalf("%d ReadDone calls for %d reads", got, f.taken.Load())
	}
	if got := f.off.Load(); got != int64(agains) {
		t.Fatalf("%d answers made off the loop, want %d (the ReadDones that asked)", got, agains)
	}
	c.Close()
	waitFor(t, "the answers' Done", func() bool { return f.freed.Load() == f.made.Load() })
}

// TestLoopReadConnectionGone: a connection reset while its read is in
// flight (a read from a pipe, done when the test writes into it) is
// closed at once; its ReadDone is still called once when the read is
// done, and the answer it made is dropped, its Done closed once. The
// loop serves other connections meanwhile. (A client that only closes
// its side is answered, as a half-closed client is, and the connection
// ends when the answer cannot be written.)
func TestLoopReadConnectionGone(t *testing.T) {
	ringOn(t)
	f := newReadFixture(t)
	c := f.dial(t)
	io.WriteString(c, "GET /pipe HTTP/1.1\r\nHost: x\r\n\r\nGET /img/3 HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the read taken", func() bool { return f.taken.Load() == 1 })
	c.(*net.TCPConn).SetLinger(0) // close with a reset
	c.Close()
	waitFor(t, "the connection's end", func() bool { return f.ended.Load() == 1 })
	// Another connection is served while the read is in flight.
	o := f.dial(t)
	io.WriteString(o, "GET /img/7 HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, b := readAnswer(t, bufio.NewReader(o), "GET"); resp.StatusCode != 200 || len(b) != 7 {
		t.Fatalf("another connection: %d, %d bytes", resp.StatusCode, len(b))
	}
	if f.dones.Load() != 0 {
		t.Fatal("ReadDone called before the read was done")
	}
	f.pw.Write([]byte("hello"))
	waitFor(t, "the ReadDone", func() bool { return f.dones.Load() == 1 })
	waitFor(t, "the dropped answer's Done", func() bool { return f.freed.Load() == f.made.Load() })
	if f.made.Load() != 2 { // /img/7 and the dropped /pipe
		t.Fatalf("%d answers made, want 2", f.made.Load())
	}
}

// TestLoopWriteTimeoutWhileReading: a client that reads nothing of its
// answers is closed by WriteTimeout even while a later request of its
// waits for a read the loop makes (a read that does not end, from a pipe);
// the read's ReadDone is still called once when the read is done, and the
// answer it made is dropped.
func TestLoopWriteTimeoutWhileReading(t *testing.T) {
	ringOn(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pr.Close(); pw.Close() })
	big := body(32 << 20) // far more than the socket buffers hold
	var ended, dones, freed atomic.Int64
	h := func(req *Request, a *Answer, mayBlock bool) Result {
		switch string(req.Target) {
		case "/big":
			a.Status = http.StatusOK
			a.HeaderInt("Content-Length", int64(len(big)))
			a.Body = big
			return Answered
		case "/pipe":
			if mayBlock {
				return Declined
			}
			b := make([]byte, 5)
			if !a.Read(int(pr.Fd()), b, 0, func(a *Answer, n int, err error) Result {
				dones.Add(1)
				a.Status = http.StatusOK
				a.HeaderInt("Content-Length", int64(n))
				a.Body = b[:n]
				a.Done = closeFunc(func() { freed.Add(1) })
				return Answered
			}) {
				return Declined
			}
			return Pending
		}
		return Declined
	}
	// MaxQueued above the big answer, so that the pipelined request is
	// parsed while the answer before it waits in the queue.
	srv, err := New(h, http.NotFoundHandler(), Options{Loops: 1, WriteTimeout: 50 * time.Millisecond, MaxQueued: 64 << 20,
		OnClose: func() { ended.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenFor(t, srv, nil)
	t.Cleanup(func() { pw.Close() }) // ends a read still in flight before the server stops
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.(*net.TCPConn).SetReadBuffer(4096)
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /pipe HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the connection closed by WriteTimeout while its read is in flight", func() bool { return ended.Load() == 1 })
	if dones.Load() != 0 {
		t.Fatal("ReadDone called before the read was done")
	}
	pw.Write([]byte("hello"))
	waitFor(t, "the ReadDone", func() bool { return dones.Load() == 1 })
	waitFor(t, "the dropped answer's Done", func() bool { return freed.Load() == 1 })
}

// TestLoopReadAbandonedRing: when a stopping loop's ring cannot be waited
// on (the ring is then kept for the life of the process), the requests of
// the reads left in it are never handed to their ReadDone, which would
// release buffers the kernel may still write, and stay reachable for good.
func TestLoopReadAbandonedRing(t *testing.T) {
	ringOn(t)
	orig := ringClose
	ringClose = func(*vfs.LoopRing, func(uint64, int, error)) {} // waits for nothing
	t.Cleanup(func() { ringClose = orig })
	abandonedMu.Lock()
	before := len(abandonedReads)
	abandonedMu.Unlock()
	f := newReadFixture(t)
	c := f.dial(t)
	io.WriteString(c, "GET /pipe HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the read taken", func() bool { return f.taken.Load() == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.srv.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if n := f.dones.Load(); n != 0 {
		t.Fatalf("%d ReadDone calls for a read the ring may still make", n)
	}
	abandonedMu.Lock()
	defer abandonedMu.Unlock()
	kept := 0
	for _, reads := range abandonedReads[before:] {
		for _, j := range reads {
			if string(j.req.Target) == "/pipe" {
				kept++
			}
		}
	}
	if kept != 1 {
		t.Fatalf("%d requests of the abandoned ring kept reachable, want 1", kept)
	}
}

// TestLoopBodyInFileWaits: an answer whose Body lies in a file's mapping
// (BodyInFile) is written without the scheduler in the loop's turn in
// which its Handler made it (its pages were just found in the page
// cache), and through it when it was made off the loop (the pages may
// have left since); one from memory only never goes through it.
func TestLoopBodyInFileWaits(t *testing.T) {
	waited := countWaits(t)
	page := body(16 << 10) // well under a socket buffer: written in one call
	h := func(req *Request, a *Answer, mayBlock bool) Result {
		target := string(req.Target)
		if target == "/mapped-off" && !mayBlock {
			return Blocked
		}
		a.Status = http.StatusOK
		a.HeaderInt("Content-Length", int64(len(page)))
		a.Body = page
		a.BodyInFile = target != "/memory"
		return Answered
	}
	srv, err := New(h, http.NotFoundHandler(), Options{Loops: 1})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenFor(t, srv, nil)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(path string) int64 {
		before := waited.Load()
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, b := readAnswer(t, br, "GET"); resp.StatusCode != 200 || !bytes.Equal(b, page) {
			t.Fatalf("%s: %d, %d bytes", path, resp.StatusCode, len(b))
		}
		return waited.Load() - before
	}
	if n := get("/memory"); n != 0 {
		t.Fatalf("an answer from memory took %d writes through the scheduler, want 0", n)
	}
	if n := get("/mapped"); n != 0 {
		t.Fatalf("an answer from a file's mapping, written in its turn, took %d writes through the scheduler, want 0", n)
	}
	if n := get("/mapped-off"); n == 0 {
		t.Fatal("an answer from a file's mapping made off the loop was written without the scheduler")
	}
}

// TestLoopReadShutdown: a loop stopped with a read in flight waits for it
// before it ends (the kernel may still write the read's buffer) and has
// its ReadDone release what it holds, once.
func TestLoopReadShutdown(t *testing.T) {
	ringOn(t)
	f := newReadFixture(t)
	c := f.dial(t)
	io.WriteString(c, "GET /pipe HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the read taken", func() bool { return f.taken.Load() == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // out of time: the connection is cut
	done := make(chan error, 1)
	go func() { done <- f.srv.Shutdown(ctx) }()
	waitEOF(t, c)
	select {
	case <-done:
		t.Fatal("Shutdown returned with a read in flight")
	default:
	}
	f.pw.Write([]byte("bye"))
	<-done
	if f.dones.Load() != 1 || f.freed.Load() != f.made.Load() || f.made.Load() != 1 {
		t.Fatalf("%d ReadDone calls, %d answers made, %d Done closed; want 1, 1, 1", f.dones.Load(), f.made.Load(), f.freed.Load())
	}
}

// TestLoopReadPanics: a ReadDone that panics ends its connection with no
// answer, as a Handler that panics does; the loop serves on.
func TestLoopReadPanics(t *testing.T) {
	ringOn(t)
	f := newReadFixture(t)
	c := f.dial(t)
	io.WriteString(c, "GET /panic HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the read taken", func() bool { return f.taken.Load() == 1 })
	f.pw.Write([]byte("x"))
	waitEOF(t, c)
	o := f.dial(t)
	io.WriteString(o, "GET /img/7 HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, b := readAnswer(t, bufio.NewReader(o), "GET"); resp.StatusCode != 200 || len(b) != 7 {
		t.Fatalf("after the panic: %d, %d bytes", resp.StatusCode, len(b))
	}
}

// TestLoopPendingWithoutRead: a Handler that returns Pending without
// taking a read has nothing to answer it on the loop; the request goes
// off the loop (as Blocked) instead of leaving its connection waiting,
// and the connection goes on serving.
func TestLoopPendingWithoutRead(t *testing.T) {
	f := newReadFixture(t)
	c := f.dial(t)
	br := bufio.NewReader(c)
	for range 2 {
		io.WriteString(c, "GET /stray HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, b := readAnswer(t, br, "GET"); resp.StatusCode != 200 || string(b) != "off" {
			t.Fatalf("Pending without a read: %d %q", resp.StatusCode, b)
		}
	}
	io.WriteString(c, "GET /img/9 HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, b := readAnswer(t, br, "GET"); resp.StatusCode != 200 || len(b) != 9 {
		t.Fatalf("after it: %d, %d bytes", resp.StatusCode, len(b))
	}
	if f.off.Load() != 2 || f.taken.Load() != 0 {
		t.Fatalf("%d answered off the loop, %d reads taken; want 2 and 0", f.off.Load(), f.taken.Load())
	}
}

// TestLoopReadWithoutRing: where io_uring cannot be had, Read takes no
// read and the handler's requests go off the loop, answered as before.
func TestLoopReadWithoutRing(t *testing.T) {
	orig := newLoopRing
	newLoopRing = func(int) (*vfs.LoopRing, error) { return nil, os.NewSyscallError("io_uring_setup", syscall.EPERM) }
	defer func() { newLoopRing = orig }()
	f := newReadFixture(t)
	c := f.dial(t)
	br := bufio.NewReader(c)
	for i := range 5 {
		fmt.Fprintf(c, "GET /read/%d/%d HTTP/1.1\r\nHost: x\r\n\r\n", i*1000, 500)
		resp, b := readAnswer(t, br, "GET")
		if resp.StatusCode != 200 || !bytes.Equal(b, f.data[i*1000:i*1000+500]) {
			t.Fatalf("read %d without a ring: %d, %d bytes", i, resp.StatusCode, len(b))
		}
	}
	if f.taken.Load() != 0 || f.off.Load() != 5 {
		t.Fatalf("without a ring: %d reads taken by the loop, %d answered off it; want 0 and 5", f.taken.Load(), f.off.Load())
	}
}

// closeFunc is an io.Closer that calls itself.
type closeFunc func()

func (f closeFunc) Close() error { f(); return nil }

// countWaits counts, until the test ends, the loop's system calls made
// through the scheduler (waitingCall).
func countWaits(t *testing.T) *atomic.Int64 {
	var waited atomic.Int64
	orig := waitingCall
	waitingCall = func(trap, a1, a2, a3 uintptr) (uintptr, uintptr, syscall.Errno) {
		waited.Add(1)
		return orig(trap, a1, a2, a3)
	}
	t.Cleanup(func() { waitingCall = orig })
	return &waited
}
