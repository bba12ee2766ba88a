package store

import (
	"bytes"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// TestLoopColdReadsOnTheLoop: on the event loops, an image the page cache
// does not hold is read by the loop itself, through its io_uring, and
// answered there: every cold GET is one disk read (direct the first time,
// buffered when read again within the window), counted as made by a loop,
// and answered whole; the direct-read buffer each is answered from is back
// in the pool once its answer is written. A needle damaged on the disk is
// answered 500, never its bytes, and its buffer is back too.
func TestLoopColdReadsOnTheLoop(t *testing.T) {
	if r, err := vfs.NewLoopRing(1); err != nil {
		t.Skip(err)
	} else {
		r.Close(nil)
	}
	ts, photos, v, drop := directStore(t, ServerOptions{EventLoop: true}, 9, 3)
	loopReads := func() float64 { return scrapeCounter(t, ts.base, "haybale_store_http_loop_disk_reads_total") }
	coldGetRounds(t, ts, photos, v, drop, func() func(int, int64) {
		l0 := loopReads()
		return func(round int, n int64) {
			if got := loopReads() - l0; got != float64(n) {
				t.Fatalf("round %d: %v of %d cold GETs read by the loops, want all", round, got, n)
			}
		}
	})
	waitLent := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ts.srv.store.direct.Lent() != 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d direct-read buffers still lent with every answer written", what, ts.srv.store.direct.Lent())
			}
		}
	}
	waitLent("after the cold GETs")

	// Damage one image on the disk: read cold by the loop, it is answered
	// 500, and nothing of it is served.
	p := photos[1]
	e, ok := v.Locate(p.id.Key, needle.SizeLarge)
	if !ok {
		t.Fatal("the large image is not there")
	}
	path := volume.DatPath(ts.srv.store.opts.Dir, 1)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	at := e.Offset + needle.HeaderSize + 1000
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for range 2 { // direct, then buffered
		drop()
		l0 := loopReads()
		resp, body := ts.do(t, http.MethodGet, needle.ImagePath(p.id, needle.SizeLarge, "jpg"), nil)
		if resp.StatusCode != http.StatusInternalServerError || bytes.Contains(body, p.data[needle.SizeLarge][:64]) {
			t.Fatalf("damaged image: %d, %d bytes; want 500 and none of it", resp.StatusCode, len(body))
		}
		if loopReads()-l0 != 1 {
			t.Fatal("the damaged image was not read by the loop")
		}
		waitLent("after the damaged image")
	}
}
