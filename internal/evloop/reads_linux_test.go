//go:build linux

package evloop

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
)

// refuser has the loops' rings refuse every submission of a read of a
// descriptor it holds, as a ring with no place left does, and counts the
// refusals. It is set before the server starts (and put back after the
// server stops); the descriptors it refuses may change while it runs.
type refuser struct {
	fds     [2]atomic.Int64 // refused descriptors; -1: none
	refused atomic.Int64
}

func refuseSubmits(t *testing.T) *refuser {
	t.Helper()
	r := &refuser{}
	r.fds[0].Store(-1)
	r.fds[1].Store(-1)
	orig := ringSubmit
	ringSubmit = func(lr *vfs.LoopRing, fd int, b []byte, off int64, tag uint64) error {
		if int64(fd) == r.fds[0].Load() || int64(fd) == r.fds[1].Load() {
			r.refused.Add(1)
			return vfs.ErrRingFull
		}
		return orig(lr, fd, b, off, tag)
	}
	t.Cleanup(func() { ringSubmit = orig })
	return r
}

// TestLoopReadsPartSubmitted: a request of two reads whose second the
// ring refuses (it filled part way) is taken all the same: its ReadsDone
// is not called while the first read is in flight (its buffer is the
// kernel's until then), is called once when it is done, with the second
// read failed with the ring's error, and the request goes off the loop,
// answered once; the connection serves on, in order. A request whose
// first read is refused takes nothing and goes off the loop at once.
func TestLoopReadsPartSubmitted(t *testing.T) {
	ringOn(t)
	refuse := refuseSubmits(t) // before the server starts
	f := newReadFixture(t)
	refuse.fds[0].Store(int64(f.pr2.Fd()))
	c := f.dial(t)
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /pipes HTTP/1.1\r\nHost: x\r\n\r\nGET /img/4 HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the reads taken", func() bool { return f.taken.Load() == 1 })
	if refuse.refused.Load() != 1 {
		t.Fatalf("%d submissions refused, want 1", refuse.refused.Load())
	}
	// The connection is paused behind /pipes: nothing is answered, and
	// the ReadsDone waits for the read in flight.
	o := f.dial(t)
	io.WriteString(o, "GET /img/7 HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, b := readAnswer(t, bufio.NewReader(o), "GET"); resp.StatusCode != 200 || len(b) != 7 {
		t.Fatalf("another connection: %d, %d bytes", resp.StatusCode, len(b))
	}
	if f.dones.Load() != 0 || f.off.Load() != 0 {
		t.Fatalf("%d ReadsDone calls, %d answers off the loop with a read in flight; want 0 and 0", f.dones.Load(), f.off.Load())
	}
	f.pw.Write([]byte("first"))
	if resp, b := readAnswer(t, br, "GET"); resp.StatusCode != 200 || string(b) != "off" {
		t.Fatalf("part submitted: %d %q, want 200 \"off\"", resp.StatusCode, b)
	}
	if resp, b := readAnswer(t, br, "GET"); resp.StatusCode != 200 || len(b) != 4 {
		t.Fatalf("the next request: %d, %d bytes", resp.StatusCode, len(b))
	}
	if f.dones.Load() != 1 || f.off.Load() != 1 {
		t.Fatalf("%d ReadsDone calls, %d answers off the loop; want 1 and 1", f.dones.Load(), f.off.Load())
	}

	// The first read refused: nothing taken, off the loop at once.
	refuse.fds[1].Store(int64(f.fd))
	fmt.Fprintf(c, "GET /two/%d/%d/%d/%d HTTP/1.1\r\nHost: x\r\n\r\n", 10, 300, 5000, 200)
	want := append(append([]byte(nil), f.data[10:310]...), f.data[5000:5200]...)
	if resp, b := readAnswer(t, br, "GET"); resp.StatusCode != 200 || !bytes.Equal(b, want) {
		t.Fatalf("first read refused: %d, %d bytes", resp.StatusCode, len(b))
	}
	if f.taken.Load() != 1 || f.dones.Load() != 1 || f.off.Load() != 2 {
		t.Fatalf("%d taken, %d ReadsDone calls, %d off the loop; want 1, 1, 2", f.taken.Load(), f.dones.Load(), f.off.Load())
	}
	c.Close()
	o.Close()
	waitFor(t, "the answers' Done", func() bool { return f.freed.Load() == f.made.Load() })
}

// TestLoopReadsConnectionGone: a connection reset with two reads in
// flight is closed at once; its ReadsDone is called once, only when both
// reads are done, and the answer it made is dropped, its Done closed.
func TestLoopReadsConnectionGone(t *testing.T) {
	ringOn(t)
	f := newReadFixture(t)
	c := f.dial(t)
	io.WriteString(c, "GET /pipes HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the reads taken", func() bool { return f.taken.Load() == 1 })
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	waitFor(t, "the connection's end", func() bool { return f.ended.Load() == 1 })
	f.pw.Write([]byte("one.."))
	// The first read done, the second in flight: a request on another
	// connection, answered after, shows the loop has seen the first.
	o := f.dial(t)
	io.WriteString(o, "GET /img/7 HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, b := readAnswer(t, bufio.NewReader(o), "GET"); resp.StatusCode != 200 || len(b) != 7 {
		t.Fatalf("another connection: %d, %d bytes", resp.StatusCode, len(b))
	}
	if f.dones.Load() != 0 {
		t.Fatal("ReadsDone called with a read in flight")
	}
	f.pw2.Write([]byte("two.."))
	waitFor(t, "the ReadsDone", func() bool { return f.dones.Load() == 1 })
	waitFor(t, "the dropped answer's Done", func() bool { return f.freed.Load() == f.made.Load() })
	if f.made.Load() != 2 || f.dones.Load() != 1 { // /img/7 and the dropped /pipes
		t.Fatalf("%d answers made, %d ReadsDone calls; want 2 and 1", f.made.Load(), f.dones.Load())
	}
}

// TestLoopReadsShutdown: a loop stopped with two reads of one request in
// flight waits for both before it ends, and has the request's ReadsDone
// release what it holds, once.
func TestLoopReadsShutdown(t *testing.T) {
	ringOn(t)
	f := newReadFixture(t)
	c := f.dial(t)
	io.WriteString(c, "GET /pipes HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the reads taken", func() bool { return f.taken.Load() == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // out of time: the connection is cut
	done := make(chan error, 1)
	go func() { done <- f.srv.Shutdown(ctx) }()
	waitEOF(t, c)
	f.pw.Write([]byte("one.."))
	select {
	case <-done:
		t.Fatal("Shutdown returned with a read in flight")
	default:
	}
	if f.dones.Load() != 0 {
		t.Fatal("ReadsDone called with a read in flight")
	}
	f.pw2.Write([]byte("two.."))
	<-done
	if f.dones.Load() != 1 || f.freed.Load() != f.made.Load() || f.made.Load() != 1 {
		t.Fatalf("%d ReadsDone calls, %d answers made, %d Done closed; want 1, 1, 1", f.dones.Load(), f.made.Load(), f.freed.Load())
	}
}

// TestLoopReadsRefusedByTheAnswer: Reads takes nothing for no reads, for
// more than MaxReads, for an empty buffer, and off the loop.
func TestLoopReadsRefusedByTheAnswer(t *testing.T) {
	ringOn(t)
	b := make([]byte, 8)
	r := FileRead{FD: 0, Buf: b}
	var a Answer // off the loop: no loop to read
	if a.Reads([]FileRead{r}, func(*Answer, []ReadResult) Result { return Answered }) {
		t.Fatal("Reads took a read off the loop")
	}
	l := &loop{} // a loop's answer: refused before the ring is asked
	a.loopRead.l = l
	done := func(*Answer, []ReadResult) Result { return Answered }
	for name, reads := range map[string][]FileRead{
		"none":      nil,
		"too many":  make([]FileRead, MaxReads+1),
		"empty buf": {r, {FD: 0}},
	} {
		if a.Reads(reads, done) || a.loopRead.taken {
			t.Fatalf("%s: taken", name)
		}
	}
	if a.Reads([]FileRead{r}, nil) {
		t.Fatal("no ReadsDone: taken")
	}
}
