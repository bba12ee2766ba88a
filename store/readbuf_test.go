package store

import (
	"bytes"
	"math/rand/v2"
	"net/http"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// getFast answers one GET of path on the fast path as the server does,
// then resets the request, which returns the read buffer to its pool.
func getFast(t testing.TB, h *httpHandler, ctx *fasthttp.RequestCtx, path string, want []byte) {
	t.Helper()
	ctx.Request.Header.SetMethod(http.MethodGet)
	ctx.Request.SetRequestURI(path)
	if !h.serveFast(ctx) || ctx.Response.StatusCode() != http.StatusOK || !bytes.Equal(ctx.Response.Body(), want) {
		t.Fatalf("GET %s: status %d, %d bytes, want 200 and %d bytes", path, ctx.Response.StatusCode(), len(ctx.Response.Body()), len(want))
	}
	ctx.Request.Reset()
	ctx.Response.Reset()
}

// The read buffer pools hold no buffer up front: a read of a small image
// of any size code holds a buffer of its own length rounded up to
// volume.ReadBufferClass, not one sized for the largest images of its
// code.
func TestReadBuffersSizedByNeedle(t *testing.T) {
	ts := startServer(t, Options{Dir: "/data", FS: vfs.NewMem()}, ServerOptions{})
	ts.allocate(t, 1)
	h := ts.srv.handler.(*httpHandler)
	for i := range h.pools {
		if rb := h.pools[i].New().(*readBuf); cap(rb.b) != 0 {
			t.Errorf("pool %d: a new read buffer has %d bytes up front, want none", i, cap(rb.b))
		}
	}
	// Images of 100..800 bytes: every size code's needle fits one class.
	p := randomPhoto(rand.New(rand.NewPCG(3, 3)), 1, 1, 100)
	ts.writePhoto(t, p)
	var ctx fasthttp.RequestCtx
	for i, size := range needle.PhotoSizes {
		getFast(t, h, &ctx, needle.ImagePath(p.id, size, "jpg"), p.data[i])
		// The buffer just returned, or a new empty one should the pool
		// have dropped it: never a large one.
		rb := h.pools[sizePool(size)].Get().(*readBuf)
		if cap(rb.b) > volume.ReadBufferClass {
			t.Errorf("size %v: the pool holds a buffer of %d bytes after a read of %d, want at most %d",
				size, cap(rb.b), len(p.data[i]), volume.ReadBufferClass)
		}
		rb.pool.Put(rb)
	}
}

// Once the pools have seen the images a store serves, a GET allocates no
// read buffer, though the images of one size code differ in length.
func TestFastGETAllocatesNoBufferInSteadyState(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops buffers at random under the race detector")
	}
	ts := startServer(t, Options{Dir: "/data", FS: vfs.NewMem()}, ServerOptions{})
	ts.allocate(t, 1)
	h := ts.srv.handler.(*httpHandler)
	r := rand.New(rand.NewPCG(4, 4))
	var photos []*photo
	for k := uint64(1); k <= 12; k++ {
		// Thumbnails of 2,000..6,000 bytes, large images 8 times that.
		p := randomPhoto(r, 1, k, 2000+r.IntN(4000))
		ts.writePhoto(t, p)
		photos = append(photos, p)
	}
	// A collection empties the pools; none runs while this test counts.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var ctx fasthttp.RequestCtx
	getAll := func() {
		for _, p := range photos {
			for i, size := range needle.PhotoSizes {
				getFast(t, h, &ctx, needle.ImagePath(p.id, size, "jpg"), p.data[i])
			}
		}
	}
	getAll() // the pools learn the sizes
	const rounds = 5
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range rounds {
		getAll()
	}
	runtime.ReadMemStats(&after)
	gets := uint64(rounds * len(photos) * len(needle.PhotoSizes))
	if per := (after.TotalAlloc - before.TotalAlloc) / gets; per >= 1000 {
		t.Fatalf("a GET allocated %d bytes on average in steady state, want no read buffer (under 1000 bytes; the smallest image has 2000)", per)
	}
}
