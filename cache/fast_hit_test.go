package cache

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/needle"
)

// fastHitCache returns a cache holding a 5,000-byte image (in Go memory)
// and a 300,000-byte one (in the memfd, where there is one), photos 1 and
// 2, each as size s and its WebP variant, loaded as misses load them. Each
// image has an ETag of its own.
func fastHitCache(tb testing.TB) (*Cache, [2]needle.PhotoID) {
	tb.Helper()
	lens := map[uint64]int{1: 5000, 2: 300000}
	buf := make([]byte, 300000)
	load := LoaderFunc(func(_ context.Context, id needle.PhotoID, size needle.SizeCode) (Loaded, error) {
		ct := "image/jpeg"
		if size.IsWebP() {
			ct = "image/webp"
		}
		return Loaded{
			Data: buf[:lens[id.Key]], ContentType: ct, ETag: fmt.Sprintf(`"%08x%08x"`, id.Key, size),
			LastModified: "Mon, 02 Jan 2006 15:04:05 GMT", Writable: true,
		}, nil
	})
	c, err := New(Options{Loader: load, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	var ids [2]needle.PhotoID
	for i := range ids {
		ids[i] = needle.PhotoID{Vid: simWritableVid, Key: uint64(i + 1), Cookie: 9}
		w, _ := needle.SizeSmall.WebP()
		for _, s := range []needle.SizeCode{needle.SizeSmall, w} {
			e, err := c.get(key{ids[i], s}, s, false)
			if err != nil {
				tb.Fatal(err)
			}
			e.release()
		}
	}
	return c, ids
}

// fastRequest sets ctx up as a fresh keep-alive request for target, as
// the server does between requests.
func fastRequest(ctx *fasthttp.RequestCtx, method, target string, accept string) {
	ctx.Request.Reset()
	ctx.Response.Reset()
	ctx.ResetUserValues()
	ctx.Request.Header.SetMethod(method)
	ctx.Request.Header.SetRequestURI(target)
	ctx.Request.Header.SetHost("cache.example")
	if accept != "" {
		ctx.Request.Header.Set("Accept", accept)
	}
}

// TestFastHitAllocs checks that a plain hit answered by the fast path
// allocates nothing: neither the lookup (path, key) nor the answer's
// headers, with an extension or a bare size chosen by Accept, GET of an
// image in Go memory or HEAD of one in the memfd.
func TestFastHitAllocs(t *testing.T) {
	c, ids := fastHitCache(t)
	cases := []struct {
		method, target, accept string
	}{
		{http.MethodGet, needle.ImagePath(ids[0], needle.SizeSmall, "jpg"), ""},
		{http.MethodGet, needle.ImagePath(ids[0], needle.SizeSmall, ""), "image/webp,*/*;q=0.8"},
		{http.MethodGet, needle.ImagePath(ids[0], needle.SizeSmall, ""), ""},
		{http.MethodHead, needle.ImagePath(ids[1], needle.SizeSmall, "jpg"), ""},
	}
	var ctx fasthttp.RequestCtx
	for _, tc := range cases {
		served := true
		allocs := testing.AllocsPerRun(200, func() {
			fastRequest(&ctx, tc.method, tc.target, tc.accept)
			served = served && c.serveFast(&ctx)
		})
		if !served {
			t.Errorf("%s %s (Accept %q): not answered by the fast path", tc.method, tc.target, tc.accept)
		}
		if allocs != 0 {
			t.Errorf("%s %s (Accept %q): %v allocations per hit, want 0", tc.method, tc.target, tc.accept, allocs)
		}
	}
}

// BenchmarkFastHit measures the fast path's own CPU per thumbnail hit,
// without the network: the request's lookup and headers (serveFast) and
// the answer's serialisation into a buffered writer, as fasthttp writes
// it; the request parsing and the system calls are left out.
func BenchmarkFastHit(b *testing.B) {
	c, ids := fastHitCache(b)
	for _, bc := range []struct {
		name, target, accept string
	}{
		{"ext", needle.ImagePath(ids[0], needle.SizeSmall, "jpg"), ""},
		{"bare", needle.ImagePath(ids[0], needle.SizeSmall, ""), "*/*"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var ctx fasthttp.RequestCtx
			w := bufio.NewWriterSize(io.Discard, 16<<10)
			b.ReportAllocs()
			for b.Loop() {
				fastRequest(&ctx, http.MethodGet, bc.target, bc.accept)
				if !c.serveFast(&ctx) {
					b.Fatal("not a fast hit")
				}
				if err := ctx.Response.Write(w); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestFastHitDeclines checks which hits the fast path leaves to net/http:
// every conditional or partial request, whatever the case of the header's
// name as sent, and not a request with other headers; and that a bare
// size follows every Accept header of the request, as net/http's choice
// does.
func TestFastHitDeclines(t *testing.T) {
	c, ids := fastHitCache(t)
	withExt := needle.ImagePath(ids[0], needle.SizeSmall, "jpg")
	parse := func(raw string) *fasthttp.RequestCtx {
		var ctx fasthttp.RequestCtx
		if err := ctx.Request.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		return &ctx
	}
	for _, name := range imagehttp.ConditionalHeaders {
		for _, spelled := range []string{name, strings.ToLower(name), strings.ToUpper(name)} {
			raw := "GET " + withExt + " HTTP/1.1\r\nHost: c\r\nX-Other: 1\r\n" + spelled + ": x\r\nAccept: */*\r\n\r\n"
			if c.serveFast(parse(raw)) {
				t.Errorf("a request with %q was answered by the fast path", spelled)
			}
		}
	}
	raw := "GET " + withExt + " HTTP/1.1\r\nHost: c\r\nUser-Agent: u\r\nCookie: a=b\r\nX-Range: 1\r\nIf-Nothing: x\r\n\r\n"
	if !c.serveFast(parse(raw)) {
		t.Errorf("a plain hit with other headers was not answered by the fast path")
	}
	bare := needle.ImagePath(ids[0], needle.SizeSmall, "")
	webp, _ := needle.SizeSmall.WebP()
	for _, tc := range []struct {
		accept []string
		want   needle.SizeCode
	}{
		{nil, needle.SizeSmall},
		{[]string{"image/jpeg"}, needle.SizeSmall},
		{[]string{"image/webp"}, webp},
		{[]string{"image/jpeg", "image/webp;q=0.5"}, webp},
		{[]string{"image/webp;q=0", "text/html"}, needle.SizeSmall},
	} {
		raw := "GET " + bare + " HTTP/1.1\r\nHost: c\r\n"
		for _, a := range tc.accept {
			raw += "accept: " + a + "\r\n"
		}
		ctx := parse(raw + "\r\n")
		if !c.serveFast(ctx) {
			t.Errorf("Accept %q: not answered by the fast path", tc.accept)
			continue
		}
		e, _ := c.entries.GetIfPresent(key{ids[0], tc.want})
		if got := ctx.Response.Header.Peek("Etag"); string(got) != e.etag || string(ctx.Response.Header.Peek("Vary")) != "Accept" {
			t.Errorf("Accept %q: ETag %s, Vary %q; want the ETag %s of size %v and Vary: Accept", tc.accept, got, ctx.Response.Header.Peek("Vary"), e.etag, tc.want)
		}
	}
}
