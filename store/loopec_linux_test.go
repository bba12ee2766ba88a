package store

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net/http"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// TestLoopECColdReadsOnTheLoop: on the event loops, an image of an EC
// volume the page cache does not hold, whose needle lies in one segment
// of a shard held here, is read by the loop itself through its io_uring
// (one read, direct for the large sizes) and answered there; one on two
// segments or more is read off the loop, as before, with one read per
// segment. Every answer is the image whole.
func TestLoopECColdReadsOnTheLoop(t *testing.T) {
	if r, err := vfs.NewLoopRing(1); err != nil {
		t.Skip(err)
	} else {
		r.Close(nil)
	}
	ctx := context.Background()
	dir := t.TempDir()
	ts := startServer(t, Options{Dir: dir, DirectReads: true}, ServerOptions{EventLoop: true})
	ts.allocate(t, 1)
	photos := ts.writeRandomPhotos(t, rand.New(rand.NewPCG(15, 2)), 1, 8, 0x200, 4000, 700)
	if _, err := ts.client.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: 1, Reason: "full"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.client.EcEncode(ctx, &storepb.EcEncodeRequest{Vid: 1, LargeBlock: 1 << 20, SmallBlock: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	ev, err := ts.srv.store.ECVolume(1)
	if err != nil {
		t.Fatal(err)
	}
	if st := ev.Status(); len(st.Local) != volume.ECShards || st.DirectOff != "" {
		t.Fatalf("%d local shards, direct off: %q", len(st.Local), st.DirectOff)
	}
	drop := func() {
		for i := range volume.ECShards {
			f, err := os.Open(volume.ECShardPath(dir, 1, i))
			if err != nil {
				t.Fatal(err)
			}
			err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	loopReads := func() float64 { return scrapeCounter(t, ts.base, "haybale_store_http_loop_disk_reads_total") }
	onLoop, offLoop, direct := 0, 0, int64(0)
	for _, p := range photos {
		for i, size := range needle.PhotoSizes {
			drop()
			st0, l0 := ev.Status(), loopReads()
			resp, body := ts.do(t, http.MethodGet, needle.ImagePath(p.id, size, "jpg"), nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, p.data[i]) {
				t.Fatalf("%v: %d, %d bytes", size, resp.StatusCode, len(body))
			}
			st, l := ev.Status(), loopReads()-l0
			// Whether the loop can read it: one segment of a local shard
			// (asked after the GET, so the direct policy's window sees
			// the GET's read first).
			c, _, one, err := ev.StartColdRead(p.id.Key, p.id.Cookie, size, nil)
			if err != nil {
				t.Fatal(err)
			}
			if one {
				c.Abandon()
				onLoop++
			} else {
				offLoop++
			}
			preads, wantLoop := st.Preads-st0.Preads, 0.0
			if one {
				wantLoop = 1
			}
			if one != (preads == 1) || preads == 0 || st.Reads-st0.Reads != 1 || l != wantLoop || st.Degraded != st0.Degraded {
				t.Fatalf("key %x %v (one segment %v): %d preads, %d reads, %v read by the loop; want one pread per segment, 1 read, %v by the loop", p.id.Key, size, one, preads, st.Reads-st0.Reads, l, wantLoop)
			}
			direct += st.DirectReads - st0.DirectReads
		}
	}
	if onLoop == 0 || offLoop == 0 || direct == 0 {
		t.Fatalf("%d images read on the loop (%d direct), %d off it: want some of each", onLoop, direct, offLoop)
	}
}
