//go:build linux

package evloop

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serveFallbackOnly serves on a listener with a loop handler that
// declines everything, so that fb answers every request; it returns a
// connection to it.
func serveFallbackOnly(t *testing.T, fb http.Handler) net.Conn {
	t.Helper()
	decline := func(*Request, *Answer, bool) Result { return Declined }
	return serveWith(t, decline, fb)()
}

// listenFor listens on a loopback port and enrolls every connection it
// accepts with srv (after setup, when set); the test's end closes the
// listener and shuts srv down.
func listenFor(tb testing.TB, srv *Server, setup func(net.Conn)) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if setup != nil {
				setup(c)
			}
			srv.Enroll(c)
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ln
}

// serveWith serves h and fb on a listener and returns a function that
// opens a connection to it.
func serveWith(t *testing.T, h Handler, fb http.Handler) func() net.Conn {
	t.Helper()
	srv, err := New(h, fb, Options{Loops: 1})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenFor(t, srv, nil)
	return func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// A bound on a test that would otherwise hang, not a timing
		// assertion.
		c.SetDeadline(time.Now().Add(20 * time.Second))
		return c
	}
}

// A fallback answer whose body disagrees with the Content-Length its
// handler set must not let the client read part of the next answer as
// its body, nor read the rest of its body as the next answer.
func TestFallbackContentLengthMismatch(t *testing.T) {
	fb := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/long": // more bytes than announced
			w.Header().Set("Content-Length", "2")
			io.WriteString(w, "abcdef")
		case "/short": // fewer bytes than announced
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, "abc")
		case "/bad":
			w.Header().Set("Content-Length", "x")
			io.WriteString(w, "abc")
		case "/plus":
			w.Header().Set("Content-Length", "+3")
			io.WriteString(w, "abc")
		default:
			io.WriteString(w, "next")
		}
	})
	c := serveFallbackOnly(t, fb)
	io.WriteString(c, "GET /long HTTP/1.1\r\nHost: a\r\n\r\n"+
		"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n"+
		"GET /plus HTTP/1.1\r\nHost: a\r\n\r\n"+
		"GET /n HTTP/1.1\r\nHost: a\r\n\r\n"+
		"GET /short HTTP/1.1\r\nHost: a\r\n\r\n"+
		"GET /n HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	for _, want := range []string{"ab", "abc", "abc", "next"} {
		resp, b := readAnswer(t, br, "GET")
		if string(b) != want {
			t.Fatalf("body %q, want %q", b, want)
		}
		if cl := resp.Header.Values("Content-Length"); len(cl) != 1 || resp.ContentLength != int64(len(want)) {
			t.Fatalf("Content-Length %q for body %q", cl, want)
		}
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if !errors.Is(err, io.ErrUnexpectedEOF) || string(b) != "abc" {
		t.Fatalf("short body: read %q, %v; want abc and the connection's end", b, err)
	}
	waitEOF(t, br)
}

// A fallback handler writing a status code net/http would refuse ends the
// connection with no answer, rather than a malformed status line.
func TestFallbackInvalidStatus(t *testing.T) {
	fb := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(1000)
		io.WriteString(w, "x")
	})
	c := serveFallbackOnly(t, fb)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	b, err := io.ReadAll(c)
	if err != nil && !isReset(err) || len(b) > 0 {
		t.Fatalf("want the connection closed, got %q, %v", b, err)
	}
	if strings.Contains(string(b), "1000") {
		t.Fatal("a malformed status line was sent")
	}
}

// A Handler that panics on the loop ends its connection with no answer,
// releases what the answer held, and leaves the loop serving the others,
// as net/http does with a handler that panics.
func TestHandlerPanicOnLoop(t *testing.T) {
	var released atomic.Int64
	h := func(req *Request, a *Answer, _ bool) Result {
		if string(req.Target) == "/panic" {
			a.Done = closerFunc(func() error { released.Add(1); return nil })
			panic("handler bug")
		}
		return echoHandler(req, a, false)
	}
	dial := serveWith(t, h, http.NotFoundHandler())
	c := dial()
	io.WriteString(c, "GET /panic HTTP/1.1\r\nHost: a\r\n\r\n")
	if b, err := io.ReadAll(c); err != nil && !isReset(err) || len(b) > 0 {
		t.Fatalf("want the connection closed, got %q, %v", b, err)
	}
	if n := released.Load(); n != 1 {
		t.Fatalf("Done closed %d times, want 1", n)
	}
	c = dial()
	io.WriteString(c, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
	if _, b := readAnswer(t, bufio.NewReader(c), "GET"); string(b) != "GET /ok" {
		t.Fatalf("after a panic: %q", b)
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
