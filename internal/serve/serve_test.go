package serve

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestServeDrainsAndCleansUpOnce(t *testing.T) {
	t.Run("net/http", func(t *testing.T) { testServeDrains(t, nil) })
	// With fasthttp, every request here is declined by the fast handler
	// and answered by the net/http handler through the adaptor.
	t.Run("fasthttp", func(t *testing.T) {
		testServeDrains(t, func(*fasthttp.RequestCtx) bool { return false })
	})
}

func testServeDrains(t *testing.T, fast func(*fasthttp.RequestCtx) bool) {
	ln, err := Listen("test", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	entered := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
		}
		io.WriteString(w, "done")
	})
	var drained, cleaned atomic.Int32
	s := New(ln, h, Options{Name: "test", Fast: fast, OnDrain: func() { drained.Add(1) }, AfterDrain: func() error {
		cleaned.Add(1)
		return nil
	}})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()

	url := "http://" + s.Addr().String()
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get(url + "/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-entered
	cancel() // SIGTERM while a request is in flight
	for !s.Draining() {
		time.Sleep(time.Millisecond)
	}
	// The listener closes just after draining starts: from then on, while
	// the slow request is still in flight, new connections are refused.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	refused := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		resp, err := fresh.Get(url + "/")
		if err != nil {
			refused = true
			break
		}
		resp.Body.Close()
	}
	if !refused {
		t.Fatal("new connections were still accepted 10 s into draining")
	}
	close(release)
	if body := <-got; body != "done" {
		t.Fatalf("the request in flight got %q", body)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if drained.Load() != 1 || cleaned.Load() != 1 {
		t.Fatalf("OnDrain ran %d times, AfterDrain %d, want once each", drained.Load(), cleaned.Load())
	}
	if err := s.Serve(context.Background()); err == nil {
		t.Fatal("second Serve succeeded")
	}
}

func TestShutdownBeforeServe(t *testing.T) {
	ln, err := Listen("test", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	s := New(ln, http.NotFoundHandler(), Options{AfterDrain: func() error { return boom }})
	if err := s.Shutdown(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("Shutdown = %v, want the clean-up error", err)
	}
	if err := s.Serve(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve after Shutdown = %v", err)
	}
	if _, err := Listen("test", ""); err == nil {
		t.Fatal("Listen without an address succeeded")
	}
}

// TestFastHandlerAndFallback serves with a fast handler that answers one
// path: it answers that one, and the net/http handler answers the rest
// with its status, headers and body.
func TestFastHandlerAndFallback(t *testing.T) {
	ln, err := Listen("test", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Slow", r.Method+" "+r.URL.Path)
		w.WriteHeader(http.StatusTeapot)
		io.WriteString(w, "slow")
	})
	fast := func(ctx *fasthttp.RequestCtx) bool {
		if string(ctx.Path()) != "/fast" {
			return false
		}
		ctx.Response.Header.Set("X-Fast", "1")
		ctx.SetBodyString("fast")
		return true
	}
	s := New(ln, h, Options{Name: "test", Fast: fast})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()
	get := func(path string) (*http.Response, string) {
		resp, err := http.Get("http://" + s.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, body := get("/fast"); resp.StatusCode != http.StatusOK || body != "fast" || resp.Header.Get("X-Fast") != "1" ||
		resp.Header.Get("Server") != "" || resp.Header.Get("Content-Type") != "" {
		t.Errorf("/fast: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	if resp, body := get("/other"); resp.StatusCode != http.StatusTeapot || body != "slow" || resp.Header.Get("X-Slow") != "GET /other" {
		t.Errorf("/other: %d %v %q", resp.StatusCode, resp.Header, body)
	}
}
