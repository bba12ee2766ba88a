package cache

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"testing"

	"github.com/haybale/haybale/internal/evloop"
	"github.com/haybale/haybale/internal/imagetest"
	"github.com/haybale/haybale/needle"
)

// rawAnswer sends one raw HTTP/1.1 request to addr and reads the answer,
// without its Date header.
func rawAnswer(t *testing.T, addr, method, target string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	resp, body := imagetest.RawAnswer(t, addr, method, target, hdr)
	resp.Header.Del("Date")
	return resp, body
}

// TestFastHitAnswersAsMiss checks that the fast hit path answers exactly
// as the net/http path: a miss (loaded through the Loader), the hit that
// follows it (the fast path), and the same request answered by net/http
// serving the cache's handler all carry the same status, headers (but
// Date) and body; and that hits do not call the Loader.
func TestFastHitAnswersAsMiss(t *testing.T) {
	t.Run("fasthttp", func(t *testing.T) { testFastHitAnswersAsMiss(t, false) })
	t.Run("loop", func(t *testing.T) { testFastHitAnswersAsMiss(t, true) })
}

func testFastHitAnswersAsMiss(t *testing.T, loop bool) {
	up := &fakeUpstream{lens: map[uint64]int{1: 5000, 2: 300000}, buf: make([]byte, 300000)}
	for i := range up.buf {
		up.buf[i] = byte(i * 7)
	}
	c, err := New(Options{Loader: up, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(c, ServerOptions{Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler), EventLoop: loop})
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.http.EventLoop(); got != (loop && evloop.Supported) {
		t.Fatalf("served on event loops: %v, want %v", got, loop)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	ref := &http.Server{Handler: c.Handler()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ref.Serve(ln)
	defer ref.Close()

	fast := srv.Addr().String()
	for _, k := range []uint64{1, 2} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			// With an extension, as image URLs are given out: a bare size
			// is chosen by Accept on the net/http path, never a fast hit.
			p := needle.ImagePath(needle.PhotoID{Vid: simWritableVid, Key: k, Cookie: 9}, needle.SizeSmall, "jpg")
			if method == http.MethodHead {
				p = needle.ImagePath(needle.PhotoID{Vid: simWritableVid, Key: k, Cookie: 9}, needle.SizeMedium, "jpg")
			}
			reads := up.reads.Load()
			miss, missBody := rawAnswer(t, fast, method, p, nil)
			if got := up.reads.Load() - reads; got != 1 {
				t.Fatalf("%s %s: the miss made %d loads, want 1", method, p, got)
			}
			hit, hitBody := rawAnswer(t, fast, method, p, nil)
			want, wantBody := rawAnswer(t, ln.Addr().String(), method, p, nil)
			if got := up.reads.Load() - reads; got != 1 {
				t.Errorf("%s %s: the hits made %d more loads, want none", method, p, got-1)
			}
			if miss.StatusCode != http.StatusOK {
				t.Fatalf("%s %s: status %d", method, p, miss.StatusCode)
			}
			if method == http.MethodGet && !bytes.Equal(missBody, up.buf[:up.lens[k]]) {
				t.Errorf("%s %s: the miss's body is not the image", method, p)
			}
			for name, a := range map[string]*http.Response{"fast hit": hit, "net/http hit": want} {
				body := hitBody
				if name == "net/http hit" {
					body = wantBody
				}
				if a.StatusCode != miss.StatusCode || !reflect.DeepEqual(a.Header, miss.Header) || !bytes.Equal(body, missBody) {
					t.Errorf("%s %s: %s %d %v (%d bytes), miss %d %v (%d bytes)", method, p, name,
						a.StatusCode, a.Header, len(body), miss.StatusCode, miss.Header, len(missBody))
				}
			}
		}
	}
	// The large image's hits were answered from the memfd, its GET with
	// sendfile.
	if e, ok := c.entries.GetIfPresent(key{needle.PhotoID{Vid: simWritableVid, Key: 2, Cookie: 9}, needle.SizeSmall}); !ok || e.slot == nil {
		t.Errorf("the %d-byte image is not cached in the memfd", up.lens[2])
	}
	if got := gathered(t, c, "haybale_cache_http_bytes_sendfile_total"); got != float64(up.lens[2]) {
		t.Errorf("bytes sent with sendfile: %v, want %d (the one large GET hit)", got, up.lens[2])
	}
	// Bare sizes, chosen by Accept: a hit on the fast path answers as the
	// miss did and as net/http does, "Vary: Accept" included; with WebP
	// accepted, the variant (which the upstream lacks) falls back to the
	// size itself, and the alias the miss left is a hit too.
	for i, accept := range []map[string]string{nil, {"Accept": "image/webp,*/*;q=0.8"}, {"Accept": "image/avif, image/webp;q=0"}} {
		p := needle.ImagePath(needle.PhotoID{Vid: simWritableVid, Key: 1, Cookie: 9}, needle.SizeThumb+needle.SizeCode(i%2), "")
		reads := up.reads.Load()
		miss, missBody := rawAnswer(t, fast, http.MethodGet, p, accept)
		loads := up.reads.Load() - reads
		hit, hitBody := rawAnswer(t, fast, http.MethodGet, p, accept)
		want, wantBody := rawAnswer(t, ln.Addr().String(), http.MethodGet, p, accept)
		if got := up.reads.Load() - reads; got != loads {
			t.Errorf("bare %s with %v: the hits made %d more loads, want none", p, accept, got-loads)
		}
		if miss.StatusCode != http.StatusOK || miss.Header.Get("Vary") != "Accept" {
			t.Fatalf("bare %s with %v: status %d, Vary %q", p, accept, miss.StatusCode, miss.Header.Get("Vary"))
		}
		for name, a := range map[string]*http.Response{"fast hit": hit, "net/http hit": want} {
			body := hitBody
			if name == "net/http hit" {
				body = wantBody
			}
			if a.StatusCode != miss.StatusCode || !reflect.DeepEqual(a.Header, miss.Header) || !bytes.Equal(body, missBody) {
				t.Errorf("bare %s with %v: %s %d %v (%d bytes), miss %d %v (%d bytes)", p, accept, name,
					a.StatusCode, a.Header, len(body), miss.StatusCode, miss.Header, len(missBody))
			}
		}
	}
	// A conditional hit and a 404 take the net/http path through the
	// same server.
	p := needle.ImagePath(needle.PhotoID{Vid: simWritableVid, Key: 1, Cookie: 9}, needle.SizeSmall, "")
	if resp, _ := rawAnswer(t, fast, http.MethodGet, p, map[string]string{"If-None-Match": `"00000000000000aa"`}); resp.StatusCode != http.StatusNotModified {
		t.Errorf("conditional hit: status %d, want 304", resp.StatusCode)
	}
	missing := needle.ImagePath(needle.PhotoID{Vid: simWritableVid, Key: 3, Cookie: 9}, needle.SizeSmall, "")
	got, gotBody := rawAnswer(t, fast, http.MethodGet, missing, nil)
	want, wantBody := rawAnswer(t, ln.Addr().String(), http.MethodGet, missing, nil)
	if got.StatusCode != http.StatusNotFound || !reflect.DeepEqual(got.Header, want.Header) || !bytes.Equal(gotBody, wantBody) {
		t.Errorf("missing image: %d %v %q, net/http %d %v %q", got.StatusCode, got.Header, gotBody, want.StatusCode, want.Header, wantBody)
	}
}

// gathered returns the value of the cache's unlabelled metric name.
func gathered(t *testing.T, c *Cache, name string) float64 {
	t.Helper()
	mfs, err := c.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) != 1 {
			continue
		}
		m := mf.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
