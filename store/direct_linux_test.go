package store

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"testing"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// TestFastGETColdReadsDirect: with direct reads on, GETs of images not in
// the page cache answer their bytes, each read direct (one pread) into the
// pooled read buffers, and /metrics counts them; read cold again, they are
// read buffered. An image read direct is answered from the buffer of the
// direct-read pool it was read into, lent to the request until the request
// is reset, and back in the pool then.
func TestFastGETColdReadsDirect(t *testing.T) {
	ts, photos, v, drop := directStore(t, ServerOptions{}, 5, 4)
	h := ts.srv.handler.(*httpHandler)
	var ctx fasthttp.RequestCtx
	gets := int64(0)
	for round, want := range []string{"direct", "buffered"} {
		st0 := v.Status()
		for _, p := range photos {
			for i, size := range needle.PhotoSizes {
				drop()
				getFast(t, h, &ctx, needle.ImagePath(p.id, size, "jpg"), p.data[i])
				gets++
			}
		}
		st := v.Status()
		n := int64(len(photos) * len(needle.PhotoSizes))
		direct, buffered := st.DirectReads-st0.DirectReads, st.ColdBufferedReads-st0.ColdBufferedReads
		if st.Preads-st0.Preads != n || (want == "direct" && direct != n) || (want == "buffered" && buffered != n) {
			t.Fatalf("round %d: %d preads, %d direct, %d buffered for %d cold GETs, want all %s", round, st.Preads-st0.Preads, direct, buffered, n, want)
		}
	}
	// A cold image read direct is answered from the pool's buffer it was
	// read into, lent to the request until its answer is written (the
	// request reset, its user values closed); then it is back.
	if n := ts.srv.store.direct.Lent(); n != 0 {
		t.Fatalf("%d direct-read buffers lent with no request open, want 0", n)
	}
	p := photos[0]
	for i, size := range needle.PhotoSizes {
		drop()
		st0 := v.Status()
		ctx.Request.Header.SetMethod(http.MethodGet)
		ctx.Request.SetRequestURI(needle.ImagePath(p.id, size, "jpg"))
		if !h.serveFast(&ctx) || ctx.Response.StatusCode() != http.StatusOK || !bytes.Equal(ctx.Response.Body(), p.data[i]) {
			t.Fatalf("GET of size %v: status %d, %d bytes, want 200 and the image", size, ctx.Response.StatusCode(), len(ctx.Response.Body()))
		}
		if d := v.Status().DirectReads - st0.DirectReads; d != 1 {
			t.Fatalf("GET of size %v: %d direct reads, want 1", size, d)
		}
		if lent := ts.srv.store.direct.Lent(); lent != 1 {
			t.Fatalf("GET of size %v: %d buffers lent while the request is open, want 1", size, lent)
		}
		ctx.Request.Reset() // as fasthttp does once the answer is written
		ctx.Response.Reset()
		if lent := ts.srv.store.direct.Lent(); lent != 0 {
			t.Fatalf("GET of size %v: %d buffers still lent after the request closed, want 0", size, lent)
		}
	}

	_, metrics := ts.do(t, http.MethodGet, "/metrics", nil)
	for _, want := range []string{
		fmt.Sprintf(`haybale_store_cold_reads_total{kind="direct"} %d`, gets/2+int64(len(needle.PhotoSizes))),
		fmt.Sprintf(`haybale_store_cold_reads_total{kind="buffered"} %d`, gets/2),
	} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// directStore starts a store reading cold needles direct, with volume 1
// holding n photos (random, from seed) whose every size is over
// volume.MapMin: 40..43 KB thumbnails, large images 8 times that. drop
// takes the volume file out of the page cache.
func directStore(t *testing.T, sopts ServerOptions, seed uint64, n int) (ts *testServer, photos []*photo, v *volume.Volume, drop func()) {
	t.Helper()
	dir := t.TempDir()
	ts = startServer(t, Options{Dir: dir, DirectReads: true}, sopts)
	ts.allocate(t, 1)
	r := rand.New(rand.NewPCG(5, seed))
	for k := uint64(1); k <= uint64(n); k++ {
		p := randomPhoto(r, 1, k, 40000+r.IntN(3000))
		ts.writePhoto(t, p)
		photos = append(photos, p)
	}
	v, err := ts.srv.store.Volume(1)
	if err != nil {
		t.Fatal(err)
	}
	if st := v.Status(); !st.Direct {
		t.Fatalf("volume does not read direct: %s", st.DirectOff)
	}
	drop = func() {
		f, err := os.Open(volume.DatPath(dir, 1))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
	}
	return ts, photos, v, drop
}
