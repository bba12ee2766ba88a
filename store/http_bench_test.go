package store

import (
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/internal/vfs/errorfs"
	"github.com/haybale/haybale/needle"
)

// discardWriter is a ResponseWriter that keeps nothing but the status,
// so the benchmark measures the handler rather than a recorder.
type discardWriter struct {
	hdr  http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.hdr }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }

// BenchmarkServeImage measures the image handler alone (no network): CPU
// and allocations per GET, and preads per GET through the file interface.
func BenchmarkServeImage(b *testing.B) {
	for _, size := range needle.PhotoSizes {
		b.Run(size.String(), func(b *testing.B) {
			counter := &errorfs.Counter{}
			ts := startServer(b, Options{Dir: "/data", FS: errorfs.Wrap(vfs.NewMem(), counter)}, ServerOptions{})
			ts.allocate(b, 1)
			p := randomPhoto(rand.New(rand.NewPCG(1, 1)), 1, 1, 5000)
			ts.writePhoto(b, p)
			h := ts.srv.handler
			req := httptest.NewRequest(http.MethodGet, p.path(size), nil)
			w := &discardWriter{hdr: http.Header{}}
			counter.Reset()
			b.ReportAllocs()
			b.SetBytes(int64(len(p.data[size])))
			for b.Loop() {
				clear(w.hdr)
				h.ServeHTTP(w, req)
				if w.code != http.StatusOK {
					b.Fatalf("status %d", w.code)
				}
			}
			b.ReportMetric(float64(counter.Count(errorfs.OpRead))/float64(b.N), "preads/op")
		})
	}
}

// BenchmarkServeImageFast measures the fast path's handler alone (no
// network, fasthttp's RequestCtx reused as its server reuses it): CPU,
// allocations and preads per plain GET.
func BenchmarkServeImageFast(b *testing.B) {
	for _, size := range needle.PhotoSizes {
		b.Run(size.String(), func(b *testing.B) {
			counter := &errorfs.Counter{}
			ts := startServer(b, Options{Dir: "/data", FS: errorfs.Wrap(vfs.NewMem(), counter)}, ServerOptions{})
			ts.allocate(b, 1)
			p := randomPhoto(rand.New(rand.NewPCG(1, 1)), 1, 1, 5000)
			ts.writePhoto(b, p)
			h := ts.srv.handler.(*httpHandler)
			var ctx fasthttp.RequestCtx
			// With an extension: a bare size is chosen by Accept, which
			// the net/http path answers.
			path := needle.ImagePath(p.id, size, "jpg")
			counter.Reset()
			b.ReportAllocs()
			b.SetBytes(int64(len(p.data[size])))
			for b.Loop() {
				ctx.Request.Header.SetMethod(http.MethodGet)
				ctx.Request.SetRequestURI(path)
				if !h.serveFast(&ctx) || ctx.Response.StatusCode() != http.StatusOK || len(ctx.Response.Body()) != len(p.data[size]) {
					b.Fatalf("status %d, %d bytes", ctx.Response.StatusCode(), len(ctx.Response.Body()))
				}
				// What the server does before the next request: the read
				// buffer goes back to its pool.
				ctx.Request.Reset()
				ctx.Response.Reset()
			}
			b.ReportMetric(float64(counter.Count(errorfs.OpRead))/float64(b.N), "preads/op")
		})
	}
}
