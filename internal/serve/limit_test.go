package serve

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/haybale/haybale/internal/evloop"
)

// TestMaxConns: with Options.MaxConns 2, a third connection is not served
// while two are open, and is served once one of them closes; slots come
// back as connections end; and under fasthttp the fast handler sees the
// listener's own TCP connection (RawTCP works on it, for writev and
// sendfile), which a wrapping limiter would hide.
func TestMaxConns(t *testing.T) {
	t.Run("net/http", func(t *testing.T) { testMaxConns(t, false, false) })
	t.Run("fasthttp", func(t *testing.T) { testMaxConns(t, true, false) })
	if evloop.Supported {
		t.Run("evloop", func(t *testing.T) { testMaxConns(t, false, true) })
	}
}

func testMaxConns(t *testing.T, fastMode, loopMode bool) {
	ln, err := Listen("test", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	var fastAnswers, notRaw atomic.Int64
	var fast func(*fasthttp.RequestCtx) bool
	if fastMode {
		fast = func(ctx *fasthttp.RequestCtx) bool {
			if RawTCP(ctx.Conn()) == nil {
				notRaw.Add(1)
			}
			fastAnswers.Add(1)
			ctx.SetBodyString("ok")
			return true
		}
	}
	var loopAnswers atomic.Int64
	var loop evloop.Handler
	if loopMode {
		loop = func(req *evloop.Request, a *evloop.Answer, _ bool) evloop.Result {
			loopAnswers.Add(1)
			a.Status = http.StatusOK
			a.HeaderInt("Content-Length", 2)
			a.Body = []byte("ok")
			return evloop.Answered
		}
	}
	s := New(ln, h, Options{Name: "test", Fast: fast, Loop: loop, MaxConns: 2})
	if s.EventLoop() != loopMode {
		t.Fatalf("served on event loops: %v, want %v", s.EventLoop(), loopMode)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()

	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c, bufio.NewReader(c)
	}
	send := func(c net.Conn) {
		if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	// answer reads one answer within d; "" when none came.
	answer := func(c net.Conn, r *bufio.Reader, d time.Duration) string {
		c.SetReadDeadline(time.Now().Add(d))
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.Status + " " + string(b)
	}

	a, ar := dial()
	defer a.Close()
	b, br := dial()
	defer b.Close()
	for _, c := range []struct {
		c net.Conn
		r *bufio.Reader
	}{{a, ar}, {b, br}} {
		send(c.c)
		if got := answer(c.c, c.r, 10*time.Second); !strings.HasSuffix(got, " ok") {
			t.Fatalf("one of the first two connections: answer %q", got)
		}
	}
	c, cr := dial()
	defer c.Close()
	send(c)
	if got := answer(c, cr, 300*time.Millisecond); got != "" {
		t.Fatalf("a third connection was served while two were open: %q", got)
	}
	a.Close()
	if got := answer(c, cr, 10*time.Second); !strings.HasSuffix(got, " ok") {
		t.Fatalf("the third connection was not served after one closed: %q", got)
	}
	b.Close()
	c.Close()
	// Every slot comes back: more connections, one after the other, than
	// the bound.
	for i := range 8 {
		d, dr := dial()
		send(d)
		if got := answer(d, dr, 10*time.Second); !strings.HasSuffix(got, " ok") {
			t.Fatalf("connection %d after the others closed: answer %q", i, got)
		}
		d.Close()
	}
	if loopMode && loopAnswers.Load() != 11 {
		t.Errorf("the loop answered %d requests, want 11", loopAnswers.Load())
	}
	if fastMode {
		if fastAnswers.Load() != 11 || notRaw.Load() != 0 {
			t.Errorf("fast handler answered %d requests, %d of them on a connection that is not the listener's TCP connection; want 11 and 0",
				fastAnswers.Load(), notRaw.Load())
		}
	}
}
