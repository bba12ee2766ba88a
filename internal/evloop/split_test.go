//go:build linux

package evloop

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// echoHandler answers every request on the loop with its method and
// target.
func echoHandler(req *Request, a *Answer, _ bool) Result {
	b := append(append(append([]byte(nil), req.Method...), ' '), req.Target...)
	a.Status = 200
	a.HeaderInt("Content-Length", int64(len(b)))
	if !req.IsHead() {
		a.Body = b
	}
	return Answered
}

// feed gives a connection with no socket the chunks, one read each, and
// returns the answers it queued.
func feed(chunks ...[]byte) []byte {
	s := &Server{opts: Options{}.withDefaults(), handler: echoHandler}
	l := &loop{srv: s}
	l.setNow(time.Unix(1e9, 0))
	c := &conn{l: l, fd: -1, in: make([]byte, 0, 64<<10)}
	for _, ch := range chunks {
		if len(c.in) == cap(c.in) || c.closing {
			break
		}
		c.in = append(c.in, ch...)
		c.parse()
	}
	var out []byte
	for _, s := range c.out[c.head:] {
		out = append(out, s.b...)
	}
	return out
}

// TestSplitAtEveryByte: requests cut in two at any byte, or arriving a
// byte at a time, are answered as when they arrive whole.
func TestSplitAtEveryByte(t *testing.T) {
	for i, in := range []string{
		"GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\nX: 1\r\n\r\nGET /c HTTP/1.0\r\n\r\nGET /d HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: h\r\n\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: h\r\n\r\n\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\n\r\n\r\n\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nxGET /c HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nBad\r\n\r\n",
	} {
		whole := feed([]byte(in))
		if !bytes.Contains(whole, []byte(" /a")) {
			t.Fatalf("case %d: the first request is not answered: %q", i, whole)
		}
		for k := range len(in) + 1 {
			if got := feed([]byte(in[:k]), []byte(in[k:])); !bytes.Equal(got, whole) {
				t.Fatalf("case %d cut at %d: got %q, want %q", i, k, got, whole)
			}
		}
		chunks := make([][]byte, len(in))
		for k := range in {
			chunks[k] = []byte{in[k]}
		}
		if got := feed(chunks...); !bytes.Equal(got, whole) {
			t.Fatalf("case %d a byte at a time: got %q, want %q", i, got, whole)
		}
	}
	if n := bytes.Count(feed([]byte("GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nBad\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n")), []byte("HTTP/1.1 ")); n != 2 {
		t.Fatalf("%d answers, want 2: the first and the 400 that ends the connection", n)
	}
}

// BenchmarkConnRequest measures a request answered on the loop, from its
// bytes in the read buffer to its answer queued: parse, the Handler
// call, and the queueing, with no socket.
func BenchmarkConnRequest(b *testing.B) {
	s := &Server{opts: Options{}.withDefaults(), handler: echoHandler}
	l := &loop{srv: s}
	l.setNow(time.Unix(1e9, 0))
	c := &conn{l: l, fd: -1, in: make([]byte, 0, 64<<10)}
	raw := []byte(benchRequest)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		c.in = append(c.in[:0], raw...)
		c.r = 0
		c.parse()
		if len(c.out) != 2 {
			b.Fatalf("%d segments queued", len(c.out))
		}
		c.out, c.head, c.queued, c.arena = c.out[:0], 0, 0, c.arena[:0]
	}
}

// TestAnswerForClosedConnDropped: an answer made off the loop for a
// connection closed meanwhile, whose descriptor a new connection has
// taken, is dropped (its Done closed once) and never reaches the new one.
func TestAnswerForClosedConnDropped(t *testing.T) {
	s := &Server{opts: Options{}.withDefaults(), handler: echoHandler}
	l := &loop{srv: s}
	l.setNow(time.Unix(1e9, 0))
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC) // a descriptor to close
	if err != nil {
		t.Fatal(err)
	}
	l.conns = make([]*conn, fd+1)
	old := &conn{l: l, fd: fd, in: make([]byte, 0, 64), busy: true}
	l.conns[fd], l.n = old, 1
	var dones int
	j := &job{c: old, req: &Request{Minor: 1}}
	j.ans.Status = 200
	j.ans.Body = []byte("late")
	j.ans.Done = closerFunc(func() error { dones++; return nil })
	l.close(old) // the client is gone while the answer is made
	reuse := &conn{l: l, fd: fd, in: make([]byte, 0, 64)}
	l.conns[fd], l.n = reuse, 1
	l.finish(j)
	if dones != 1 {
		t.Fatalf("Done closed %d times, want 1", dones)
	}
	if len(reuse.out) != 0 || reuse.busy || reuse.closed {
		t.Fatalf("the new connection on the descriptor got %d segments (busy %v, closed %v)", len(reuse.out), reuse.busy, reuse.closed)
	}
	l.close(old) // closing twice closes nothing
	if l.n != 1 || l.conns[fd] != reuse {
		t.Fatalf("a second close of the old connection touched the new one: n %d", l.n)
	}
}
