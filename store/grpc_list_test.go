package store

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// TestGRPCAppendTimesAndTombstones checks the write rules over gRPC: the
// writer's append time is stored, an absurd one is refused with a clear
// message, a delete of a key not there keeps its tombstone, and a write of
// a deleted image is refused.
func TestGRPCAppendTimesAndTombstones(t *testing.T) {
	ts := startServer(t, Options{Dir: "/data", FS: vfs.NewMem()}, ServerOptions{})
	ctx := context.Background()
	ts.allocate(t, 1)
	at := time.Now().Add(-time.Hour).UnixNano()
	n := &storepb.Needle{Key: 5, Cookie: 55, SizeCode: 1, ContentType: 1, Data: []byte("image"), AppendTimeUnixNano: at}
	resp, err := ts.client.Write(ctx, &storepb.WriteRequest{Vid: 1, Needles: []*storepb.Needle{n}})
	if err != nil || resp.GetResults()[0].GetAppendTimeUnixNano() != at {
		t.Fatalf("write with the writer's append time: %v %v", resp, err)
	}
	rr, err := ts.client.Read(ctx, &storepb.ReadRequest{Vid: 1, Key: 5, Cookie: 55, SizeCode: 1})
	if err != nil || rr.GetNeedle().GetAppendTimeUnixNano() != at || rr.GetNeedle().GetChecksum() != resp.GetResults()[0].GetChecksum() {
		t.Fatalf("read back: %v %v", rr, err)
	}
	future := &storepb.Needle{Key: 6, Cookie: 66, SizeCode: 1, Data: []byte("x"), AppendTimeUnixNano: time.Now().Add(48 * time.Hour).UnixNano()}
	_, err = ts.client.Write(ctx, &storepb.WriteRequest{Vid: 1, Needles: []*storepb.Needle{future}})
	wantCode(t, "write stamped two days ahead", err, codes.InvalidArgument)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "ahead of this store's clock") {
		t.Fatalf("unclear error for a future append time: %q", msg)
	}
	_, err = ts.client.Delete(ctx, &storepb.DeleteRequest{Vid: 1, Key: 6, Cookie: 66, SizeCode: uint32(needle.SizeAll), AppendTimeUnixNano: -5})
	wantCode(t, "delete with a negative append time", err, codes.InvalidArgument)

	// A delete of a key that is not there yet keeps its tombstone.
	dr, err := ts.client.Delete(ctx, &storepb.DeleteRequest{Vid: 1, Key: 7, Cookie: 77, SizeCode: uint32(needle.SizeAll), AppendTimeUnixNano: at})
	if err != nil || dr.GetDeletedCount() != 0 {
		t.Fatalf("delete of a missing key: %v %v", dr, err)
	}
	late := &storepb.Needle{Key: 7, Cookie: 77, SizeCode: 2, Data: []byte("late"), AppendTimeUnixNano: at}
	_, err = ts.client.Write(ctx, &storepb.WriteRequest{Vid: 1, Needles: []*storepb.Needle{late}})
	wantCode(t, "write of a deleted key", err, codes.FailedPrecondition)
	dr, err = ts.client.Delete(ctx, &storepb.DeleteRequest{Vid: 1, Key: 5, Cookie: 55, SizeCode: 1})
	if err != nil || dr.GetDeletedCount() != 1 {
		t.Fatalf("delete: %v %v", dr, err)
	}
	dr, err = ts.client.Delete(ctx, &storepb.DeleteRequest{Vid: 1, Key: 5, Cookie: 55, SizeCode: 1})
	if err != nil || dr.GetDeletedCount() != 0 || dr.GetFreedBytes() != 0 {
		t.Fatalf("second delete: %v %v", dr, err)
	}
}

// listAll reads a whole ListNeedles stream.
func listAll(t *testing.T, sc storepb.StoreClient, req *storepb.ListNeedlesRequest) ([]*storepb.NeedleEntry, int, uint64) {
	t.Helper()
	stream, err := sc.ListNeedles(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var out []*storepb.NeedleEntry
	msgs := 0
	var total uint64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, msgs, total
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs++
		total = resp.GetTotal()
		out = append(out, resp.GetEntries()...)
	}
}

// TestListNeedles lists a volume of more entries than one message holds:
// live needles with their checksums and content hashes, tombstones merged
// in key order, damaged needles flagged.
func TestListNeedles(t *testing.T) {
	fs := vfs.NewMem()
	ts := startServer(t, Options{Dir: "/data", FS: fs}, ServerOptions{})
	ctx := context.Background()
	ts.allocate(t, 2)
	v, err := ts.srv.Store().Volume(2)
	if err != nil {
		t.Fatal(err)
	}
	const keys = 700
	var damagedAt int64
	for k := uint64(1); k <= keys; k++ {
		var ns []*needle.Needle
		for _, s := range []needle.SizeCode{needle.SizeThumb, needle.SizeSmall} {
			ns = append(ns, &needle.Needle{Key: k, Cookie: k + 1, Size: s, ContentType: needle.TypeJPEG, Data: []byte{byte(k), byte(s), 1, 2, 3}})
		}
		w, err := v.Write(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		if k == 301 {
			damagedAt = w[1].Offset
		}
		if k%100 == 0 {
			if _, err := v.Delete(ctx, k, k+1, needle.SizeAll); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := v.Delete(ctx, 5, 6, needle.SizeSmall); err != nil {
		t.Fatal(err)
	}
	// Damage key 300's s needle in place.
	f, err := fs.OpenReadWrite(volume.DatPath("/data", 2))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff, 0xfe}, damagedAt+needle.HeaderSize+1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	entries, msgs, total := listAll(t, ts.client, &storepb.ListNeedlesRequest{Vid: 2})
	wantLive := keys*2 - 7*2 - 1
	wantTombs := 7 + 1
	if len(entries) != wantLive+wantTombs || int(total) != len(entries) || msgs < 2 {
		t.Fatalf("%d entries in %d messages (total %d), want %d", len(entries), msgs, total, wantLive+wantTombs)
	}
	for i, e := range entries {
		if i > 0 {
			p := entries[i-1]
			if p.GetKey() > e.GetKey() || (p.GetKey() == e.GetKey() && p.GetSizeCode() >= e.GetSizeCode()) {
				t.Fatalf("entry %d (%x/%d) after (%x/%d): not in order", i, e.GetKey(), e.GetSizeCode(), p.GetKey(), p.GetSizeCode())
			}
		}
		if e.GetKey() == 301 && e.GetSizeCode() == uint32(needle.SizeSmall) {
			if e.GetDamaged() == "" || e.GetChecksum() != 0 {
				t.Fatalf("damaged needle listed as %+v", e)
			}
			continue
		}
		if e.GetCookie() != e.GetKey()+1 || e.GetDamaged() != "" || e.GetAppendTimeUnixNano() == 0 {
			t.Fatalf("entry %+v", e)
		}
		if e.GetTombstone() {
			continue
		}
		rr, err := ts.client.Read(ctx, &storepb.ReadRequest{Vid: 2, Key: e.GetKey(), Cookie: e.GetCookie(), SizeCode: e.GetSizeCode()})
		if err != nil {
			t.Fatal(err)
		}
		n := needle.Needle{Key: e.GetKey(), Cookie: e.GetCookie(), Size: needle.SizeCode(e.GetSizeCode()), ContentType: needle.ContentType(rr.GetNeedle().GetContentType()),
			AppendTime: rr.GetNeedle().GetAppendTimeUnixNano(), Data: rr.GetNeedle().GetData()}
		if e.GetChecksum() != rr.GetNeedle().GetChecksum() || e.GetContentHash() != volume.ContentHash(&n) {
			t.Fatalf("key %x size %d: checksum or content hash does not match the needle", e.GetKey(), e.GetSizeCode())
		}
	}
	tombs, _, _ := listAll(t, ts.client, &storepb.ListNeedlesRequest{Vid: 2, TombstonesOnly: true})
	if len(tombs) != wantTombs {
		t.Fatalf("%d tombstones listed, want %d", len(tombs), wantTombs)
	}
	stream, err := ts.client.ListNeedles(ctx, &storepb.ListNeedlesRequest{Vid: 9})
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, "list a volume not here", err, codes.NotFound)
}
