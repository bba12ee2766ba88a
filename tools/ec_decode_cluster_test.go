package tools

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"testing"

	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// TestECDecodeCluster encodes a volume over 4 stores, deletes a photo,
// decodes it back into 2 replicas, and checks that the directory records
// it sealed on those two, that no store keeps EC files, and that every
// live photo reads byte-identical while the deleted one stays deleted.
func TestECDecodeCluster(t *testing.T) {
	ctx := context.Background()
	c, cl, ids, vid := clusterWithPhotos(t, 4, 2, 16)
	var out bytes.Buffer
	if _, err := ECDecodeCluster(ctx, rpc.Insecure(), c.DirAddr, vid, 2, Output{W: &out}); err == nil {
		t.Fatal("decode of a writable volume succeeded")
	}
	sealVolume(t, c, cl, vid, &out)
	lookState := func(want storepb.VolumeState, holders int) func() error {
		return func() error {
			resp, err := c.Directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
			if err != nil {
				return err
			}
			if resp.GetState() != want || len(resp.GetReplicas()) != holders {
				return fmt.Errorf("state %v, %d holders", resp.GetState(), len(resp.GetReplicas()))
			}
			return nil
		}
	}
	c.Eventually("volume sealed", lookState(storepb.VolumeState_VOLUME_STATE_SEALED, 2))
	enc, err := ECEncodeCluster(ctx, rpc.Insecure(), c.DirAddr, vid, ECEncodeOptions{LargeBlock: 32 << 10, SmallBlock: 1 << 10}, Output{W: &out})
	if err != nil {
		t.Fatalf("cluster encode: %v\n%s", err, out.String())
	}
	if len(enc.Shards) != 4 {
		t.Fatalf("placement %+v", enc)
	}
	c.Eventually("EC on 4 stores", lookState(storepb.VolumeState_VOLUME_STATE_EC, 4))
	for _, s := range c.Stores {
		if files, _ := filepath.Glob(filepath.Join(s.DataDir, fmt.Sprintf("%d.ecx", vid))); len(files) != 1 {
			t.Fatalf("store %s has no EC index in %s", s.HB.StoreID(), s.DataDir)
		}
	}
	// One photo deleted while erasure-coded: the journal has it.
	var gone needle.PhotoID
	for id := range ids {
		if id.Vid == vid {
			gone = id
			break
		}
	}
	if err := cl.Delete(ctx, gone); err != nil {
		t.Fatalf("delete %v: %v", gone, err)
	}
	delete(ids, gone)

	res, err := ECDecodeCluster(ctx, rpc.Insecure(), c.DirAddr, vid, 2, Output{W: &out})
	if err != nil {
		t.Fatalf("cluster decode: %v\n%s", err, out.String())
	}
	if !res.Decoded || len(res.Replicas) != 2 || res.Replicas[0] != res.Source || len(res.Removed) != 3 || len(res.Unreached) != 0 {
		t.Fatalf("decode result %+v", res)
	}
	c.Eventually("volume sealed on the 2 replicas", lookState(storepb.VolumeState_VOLUME_STATE_SEALED, 2))
	look, err := c.Directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
	if err != nil {
		t.Fatal(err)
	}
	var recorded []string
	for _, r := range look.GetReplicas() {
		recorded = append(recorded, r.GetStoreId())
	}
	slices.Sort(recorded)
	want := slices.Sorted(slices.Values(res.Replicas))
	if !slices.Equal(recorded, want) {
		t.Fatalf("directory records replicas %v, want %v", recorded, want)
	}
	for _, s := range c.Stores {
		id := s.HB.StoreID()
		if _, err := s.Srv.Store().ECVolume(vid); err == nil {
			t.Errorf("store %s still holds EC volume %d", id, vid)
		}
		if left, _ := filepath.Glob(filepath.Join(s.DataDir, fmt.Sprintf("%d.ec*", vid))); len(left) > 0 {
			t.Errorf("store %s keeps EC files %v", id, left)
		}
		_, err := s.Srv.Store().Volume(vid)
		if holds := slices.Contains(res.Replicas, id); holds != (err == nil) {
			t.Fatalf("store %s: plain volume %v, want it held: %v", id, err, holds)
		}
		if !slices.Contains(res.Replicas, id) {
			continue
		}
		for pid, k := range ids {
			if pid.Vid != vid {
				continue
			}
			for _, im := range onlineImages(k) {
				code, b := httpGet(t, s.HTTPAddr(), pid, im.Size)
				if code != http.StatusOK || !bytes.Equal(b, im.Data) {
					t.Fatalf("%v size %v on %s: HTTP %d", pid, im.Size, id, code)
				}
			}
		}
		if code, _ := httpGet(t, s.HTTPAddr(), gone, needle.SizeThumb); code != http.StatusNotFound {
			t.Fatalf("deleted %v on %s: HTTP %d", gone, id, code)
		}
	}
	if st, err := ECStatus(ctx, rpc.Insecure(), c.DirAddr, Output{W: io.Discard}); err != nil || len(st) != 0 {
		t.Fatalf("EC status after the decode: %+v %v", st, err)
	}
	if _, err := ECDecodeCluster(ctx, rpc.Insecure(), c.DirAddr, vid, 2, Output{W: &out}); err == nil {
		t.Fatal("second decode of a replicated volume succeeded")
	}
	if _, err := ECDecodeCluster(ctx, rpc.Insecure(), c.DirAddr, vid, 0, Output{W: &out}); err == nil {
		t.Fatal("decode into 0 replicas accepted")
	}
}
