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
// read buffered.
func TestFastGETColdReadsDirect(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, Options{Dir: dir, DirectReads: true}, ServerOptions{})
	ts.allocate(t, 1)
	h := ts.srv.handler.(*httpHandler)
	r := rand.New(rand.NewPCG(5, 5))
	var photos []*photo
	for k := uint64(1); k <= 4; k++ {
		p := randomPhoto(r, 1, k, 40000+r.IntN(3000)) // 40..43 KB thumbnails, large images 8 times that: all over volume.MapMin
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
	drop := func() {
		f, err := os.Open(volume.DatPath(dir, 1))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
	}
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
	_, metrics := ts.do(t, http.MethodGet, "/metrics", nil)
	for _, want := range []string{
		fmt.Sprintf(`haybale_store_cold_reads_total{kind="direct"} %d`, gets/2),
		fmt.Sprintf(`haybale_store_cold_reads_total{kind="buffered"} %d`, gets/2),
	} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
