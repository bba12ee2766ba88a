package store

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

func lists(req *directorypb.HeartbeatRequest, vid uint32) bool {
	for _, v := range req.GetVolumes() {
		if v.GetVid() == vid {
			return true
		}
	}
	return false
}

// TestAllocationStampOrdersReports: a report built before an allocation
// is stamped at or below the allocation's acknowledgement; one built after
// it is stamped above and lists the volume.
func TestAllocationStampOrdersReports(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, Options{Dir: t.TempDir(), FS: vfs.Default}, ServerOptions{})
	h, err := NewHeartbeater(ts.srv.store, HeartbeaterOptions{DirectoryAddr: "127.0.0.1:1", GRPCAddr: "g:1", HTTPAddr: "h:2", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := h.report()
	resp, err := ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 5})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := h.report()
	ack := resp.GetAcknowledgedUnixNano()
	if before.GetBuiltUnixNano() == 0 || ack == 0 {
		t.Fatalf("unstamped: report %d, acknowledgement %d", before.GetBuiltUnixNano(), ack)
	}
	if lists(before, 5) || before.GetBuiltUnixNano() >= ack {
		t.Fatalf("report built before the allocation: stamp %d, acknowledgement %d, lists it %v", before.GetBuiltUnixNano(), ack, lists(before, 5))
	}
	if !lists(after, 5) || after.GetBuiltUnixNano() <= ack {
		t.Fatalf("report built after the allocation: stamp %d, acknowledgement %d, lists it %v", after.GetBuiltUnixNano(), ack, lists(after, 5))
	}
	// A retried allocation (its first answer lost) is acknowledged anew.
	again, err := ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 5})
	if err != nil {
		t.Fatal(err)
	}
	if again.GetAcknowledgedUnixNano() <= after.GetBuiltUnixNano() {
		t.Fatalf("retried allocation stamped %d, not after the report stamped %d", again.GetAcknowledgedUnixNano(), after.GetBuiltUnixNano())
	}
}

// TestReportStampStrictlyIncreases: concurrent callers never get the same
// stamp.
func TestReportStampStrictlyIncreases(t *testing.T) {
	st, err := Open(context.Background(), Options{Dir: t.TempDir(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const workers, each = 8, 1000
	var mu sync.Mutex
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			last := int64(0)
			got := make([]int64, 0, each)
			for range each {
				s := st.ReportStamp()
				if s <= last {
					t.Errorf("stamp %d after %d", s, last)
					return
				}
				last = s
				got = append(got, s)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, s := range got {
				if seen[s] {
					t.Errorf("stamp %d handed out twice", s)
				}
				seen[s] = true
			}
		})
	}
	wg.Wait()
}

// lastAppendOf returns the last-append time a report gives volume vid.
func lastAppendOf(req *directorypb.HeartbeatRequest, vid uint32) int64 {
	for _, v := range req.GetVolumes() {
		if v.GetVid() == vid {
			return v.GetLastAppendUnixNano()
		}
	}
	return -1
}

// TestReportLastAppend: the heartbeat gives each plain volume the time its
// data file last changed, which an append moves forward.
func TestReportLastAppend(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ts := startServer(t, Options{Dir: dir, FS: vfs.Default}, ServerOptions{})
	h, err := NewHeartbeater(ts.srv.store, HeartbeaterOptions{DirectoryAddr: "127.0.0.1:1", GRPCAddr: "g:1", HTTPAddr: "h:2", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 5}); err != nil {
		t.Fatal(err)
	}
	quiet := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	if err := os.Chtimes(volume.DatPath(dir, 5), quiet, quiet); err != nil {
		t.Fatal(err)
	}
	req, _ := h.report()
	if got := lastAppendOf(req, 5); got != quiet.UnixNano() {
		t.Fatalf("last append %d, want the file's %d", got, quiet.UnixNano())
	}
	v, err := ts.srv.store.Volume(5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Write(ctx, []*needle.Needle{{Key: 1, Cookie: 2, Size: needle.SizeLarge, Data: []byte("photo")}}); err != nil {
		t.Fatal(err)
	}
	req, _ = h.report()
	if got := lastAppendOf(req, 5); got <= quiet.UnixNano() {
		t.Fatalf("last append %d after a write, not after %d", got, quiet.UnixNano())
	}
}
