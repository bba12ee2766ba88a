package tools

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"testing"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/testcluster"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// encodedCluster starts 3 stores (replication 2) with 20 photos, seals the
// volume of one of them and encodes it over the 3 stores, each then a
// holder. It returns the cluster, a client, the photos of that volume
// (with their seeds) and its vid.
func encodedCluster(t *testing.T) (*testcluster.Cluster, *client.Client, map[needle.PhotoID]int, uint32) {
	t.Helper()
	ctx := context.Background()
	c, cl, all, vid := clusterWithPhotos(t, 3, 2, 20)
	ids := map[needle.PhotoID]int{}
	for id, k := range all {
		if id.Vid == vid {
			ids[id] = k
		}
	}
	var out bytes.Buffer
	sealVolume(t, c, cl, vid, &out)
	if _, err := ECEncodeCluster(ctx, rpc.Insecure(), c.DirAddr, vid, ECEncodeOptions{LargeBlock: 32 << 10, SmallBlock: 1 << 10}, Output{W: &out}); err != nil {
		t.Fatalf("cluster encode: %v\n%s", err, out.String())
	}
	c.Eventually("directory sees the EC volume on three stores", func() error {
		resp, err := c.Directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
		if err != nil {
			return err
		}
		if resp.GetState() != storepb.VolumeState_VOLUME_STATE_EC || len(resp.GetReplicas()) != 3 {
			return fmt.Errorf("state %v, %d holders", resp.GetState(), len(resp.GetReplicas()))
		}
		return nil
	})
	return c, cl, ids, vid
}

// ecVolumeOf returns store s's open EC volume vid.
func ecVolumeOf(t *testing.T, s *testcluster.Store, vid uint32) *volume.ECVolume {
	t.Helper()
	e, err := s.Srv.Store().ECVolume(vid)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// expectServed checks, on every store, that the photos in gone answer 404
// and the others their bytes; a deleted photo answered 200 fails at once.
func expectServed(c *testcluster.Cluster, ids map[needle.PhotoID]int, gone map[needle.PhotoID]bool) error {
	for _, s := range c.Stores {
		for id, k := range ids {
			resp, err := http.Get("http://" + s.HTTPAddr() + needle.ImagePath(id, needle.SizeSmall, ""))
			if err != nil {
				return err
			}
			var body bytes.Buffer
			body.ReadFrom(resp.Body)
			resp.Body.Close()
			switch {
			case gone[id] && resp.StatusCode == http.StatusOK:
				return fmt.Errorf("%w: store %s serves deleted photo %v", errServedDeleted, s.HTTPAddr(), id)
			case gone[id] && resp.StatusCode != http.StatusNotFound:
				return fmt.Errorf("store %s: deleted photo %v answers %d", s.HTTPAddr(), id, resp.StatusCode)
			case !gone[id] && (resp.StatusCode != http.StatusOK || !bytes.Equal(body.Bytes(), onlineImages(k)[needle.SizeSmall].Data)):
				return fmt.Errorf("store %s: photo %v answers %d", s.HTTPAddr(), id, resp.StatusCode)
			}
		}
	}
	return nil
}

var errServedDeleted = errors.New("a deleted photo was served")

// eventuallyServed waits until expectServed holds, failing at once when a
// deleted photo is served.
func eventuallyServed(t *testing.T, c *testcluster.Cluster, what string, ids map[needle.PhotoID]int, gone map[needle.PhotoID]bool) {
	t.Helper()
	c.Eventually(what, func() error {
		err := expectServed(c, ids, gone)
		if err != nil && errors.Is(err, errServedDeleted) {
			t.Fatal(err)
		}
		return err
	})
}

// sameJournals checks that every store holds the same deletes of vid.
func sameJournals(t *testing.T, c *testcluster.Cluster, vid uint32, want int64) {
	t.Helper()
	first := ecVolumeOf(t, c.Stores[0], vid).JournalDigest()
	if first.Count != want {
		t.Fatalf("store 0 journals %d deletes, want %d", first.Count, want)
	}
	for i, s := range c.Stores {
		if got := ecVolumeOf(t, s, vid).JournalDigest(); got != first {
			t.Fatalf("store %d journal %+v, store 0 %+v", i, got, first)
		}
	}
}

// TestECHolderDownDuringDeletesConverges: a holder is down while photos
// are deleted; once it is back it never serves them, and its journal
// becomes the others'.
func TestECHolderDownDuringDeletesConverges(t *testing.T) {
	ctx := context.Background()
	c, cl, ids, vid := encodedCluster(t)
	down := c.Stores[2]
	down.Stop()
	gone := map[needle.PhotoID]bool{}
	for id := range ids {
		if len(gone) == 3 {
			break
		}
		// The delete goes to every holder; the down one misses it, and the
		// client says so, but the others journal it.
		if err := cl.Delete(ctx, id); err == nil {
			t.Fatalf("delete of %v with a holder down reported no error", id)
		}
		gone[id] = true
	}
	for _, s := range c.Stores[:2] {
		if got := ecVolumeOf(t, s, vid).JournalDigest().Count; got != 3 {
			t.Fatalf("live holder journals %d deletes, want 3", got)
		}
	}
	down.Restart()
	eventuallyServed(t, c, "the returned holder answers 404 for the deleted photos", ids, gone)
	sameJournals(t, c, vid, 3)
}

// TestECJournalsDifferShownAndMerged: holders that journaled different
// deletes are shown by ec status, and ec rebuild merges them into the
// union on every holder.
func TestECJournalsDifferShownAndMerged(t *testing.T) {
	ctx := context.Background()
	c, _, ids, vid := encodedCluster(t)
	gone := map[needle.PhotoID]bool{}
	h := 0
	for id := range ids {
		if len(gone) == 2 {
			break
		}
		// A delete that reached one holder only.
		if _, err := ecVolumeOf(t, c.Stores[h], vid).Delete(ctx, id.Key, id.Cookie, needle.SizeAll); err != nil {
			t.Fatal(err)
		}
		gone[id] = true
		h++
	}
	var out bytes.Buffer
	vols, err := ECStatus(ctx, rpc.Insecure(), c.DirAddr, Output{W: &out})
	if err != nil {
		t.Fatalf("ec status: %v\n%s", err, out.String())
	}
	if len(vols) != 1 || !vols[0].JournalsDiffer || len(vols[0].Journals) != 3 {
		t.Fatalf("ec status: %+v\n%s", vols, out.String())
	}
	if !bytes.Contains(out.Bytes(), []byte("JOURNALS DIFFER")) {
		t.Fatalf("ec status output does not say the journals differ:\n%s", out.String())
	}
	res, err := ECRebuildCluster(ctx, rpc.Insecure(), c.DirAddr, vid, Output{W: &out})
	if err != nil {
		t.Fatalf("ec rebuild: %v\n%s", err, out.String())
	}
	if !res.JournalsAgree || len(res.Synced) != 3 {
		t.Fatalf("ec rebuild: %+v", res)
	}
	sameJournals(t, c, vid, 2)
	if err := expectServed(c, ids, gone); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	vols, err = ECStatus(ctx, rpc.Insecure(), c.DirAddr, Output{W: &out})
	if err != nil || vols[0].JournalsDiffer {
		t.Fatalf("ec status after the rebuild: %v\n%s", err, out.String())
	}
}

// TestECLostIndexRefetched: a holder whose ecx is lost, or damaged, gets
// it back from another holder when it starts, byte for byte, and serves
// the volume again.
func TestECLostIndexRefetched(t *testing.T) {
	c, _, ids, vid := encodedCluster(t)
	want, err := os.ReadFile(volume.ECIndexPath(c.Stores[0].DataDir, vid))
	if err != nil {
		t.Fatal(err)
	}
	for i, damage := range []func(path string) error{
		os.Remove,
		func(path string) error {
			b := bytes.Clone(want)
			b[volume.ECHeaderSize+30] ^= 0x10
			return os.WriteFile(path, b, 0o644)
		},
	} {
		s := c.Stores[1+i]
		s.Stop()
		path := volume.ECIndexPath(s.DataDir, vid)
		if err := damage(path); err != nil {
			t.Fatal(err)
		}
		s.Restart()
		c.Eventually("the ecx refetched", func() error {
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, want) {
				return fmt.Errorf("ecx of store %d not restored (%v)", 1+i, err)
			}
			if _, err := s.Srv.Store().ECVolume(vid); err != nil {
				return err
			}
			return nil
		})
		eventuallyServed(t, c, "every photo served again", ids, nil)
	}
}

// TestECAllIndexesLostRegenerated: every holder loses its ecx; at start-up
// each regenerates it from the shards (its own and its peers'), byte for
// byte the original, and the journaled deletes still hold.
func TestECAllIndexesLostRegenerated(t *testing.T) {
	ctx := context.Background()
	c, _, ids, vid := encodedCluster(t)
	want, err := os.ReadFile(volume.ECIndexPath(c.Stores[0].DataDir, vid))
	if err != nil {
		t.Fatal(err)
	}
	gone := map[needle.PhotoID]bool{}
	for id := range ids {
		for _, s := range c.Stores {
			if _, err := ecVolumeOf(t, s, vid).Delete(ctx, id.Key, id.Cookie, needle.SizeAll); err != nil {
				t.Fatal(err)
			}
		}
		gone[id] = true
		break
	}
	for _, s := range c.Stores {
		s.Stop()
		if err := os.Remove(volume.ECIndexPath(s.DataDir, vid)); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range c.Stores {
		s.Restart()
	}
	c.Eventually("every ecx regenerated", func() error {
		for i, s := range c.Stores {
			got, err := os.ReadFile(volume.ECIndexPath(s.DataDir, vid))
			if err != nil || !bytes.Equal(got, want) {
				return fmt.Errorf("ecx of store %d not regenerated (%v)", i, err)
			}
			if _, err := s.Srv.Store().ECVolume(vid); err != nil {
				return err
			}
		}
		return nil
	})
	eventuallyServed(t, c, "every photo served again, the deleted one 404", ids, gone)
	sameJournals(t, c, vid, 1)
}

// TestECRebuildRegeneratesIndexOffline: haybale ec rebuild DIR rebuilds a
// missing or damaged ecx from the shards (byte-identical) along with the
// lost shards, and says so.
func TestECRebuildRegeneratesIndexOffline(t *testing.T) {
	ctx := context.Background()
	dir, warm := t.TempDir(), t.TempDir()
	buildVolume(t, dir, 30, 900)
	var out bytes.Buffer
	if _, err := ECEncode(ctx, volume.DatPath(dir, 7), warm, ECEncodeOptions{LargeBlock: 8192, SmallBlock: 1024}, Output{W: &out}); err != nil {
		t.Fatal(err)
	}
	path := volume.ECIndexPath(warm, 7)
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, damage := range []func() error{
		func() error { return os.Remove(path) },
		func() error {
			b := bytes.Clone(want)
			b[len(b)-3] ^= 0x01
			return os.WriteFile(path, b, 0o644)
		},
	} {
		if err := damage(); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(volume.ECShardPath(warm, 7, 3+i)); err != nil {
			t.Fatal(err)
		}
		if _, err := ECVerify(ctx, warm, 7, Output{W: &out}); err == nil {
			t.Fatalf("case %d: verify passed without a sound ecx", i)
		}
		out.Reset()
		res, err := ECRebuild(ctx, warm, 0, Output{W: &out, JSON: true})
		if err != nil {
			t.Fatalf("case %d: rebuild: %v\n%s", i, err, out.String())
		}
		if len(res) != 1 || res[0].IndexRegenerated == nil || res[0].IndexProblem == "" || !slices.Equal(res[0].Rebuilt, []int{3 + i}) {
			t.Fatalf("case %d: rebuild %+v", i, res)
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
			t.Fatalf("case %d: regenerated ecx differs from the original", i)
		}
		if _, err := ECVerify(ctx, warm, 7, Output{W: &out}); err != nil {
			t.Fatalf("case %d: verify after the rebuild: %v", i, err)
		}
	}
}

// TestECDecodeClusterKeepsEveryHoldersDeletes: a delete journaled by one
// holder only is not undone when another holder decodes the volume.
func TestECDecodeClusterKeepsEveryHoldersDeletes(t *testing.T) {
	ctx := context.Background()
	c, _, ids, vid := encodedCluster(t)
	gone := map[needle.PhotoID]bool{}
	for id := range ids {
		// On every holder but the one with the most shards, which decodes.
		most := 0
		for i, s := range c.Stores {
			if len(ecVolumeOf(t, s, vid).Status().Local) > len(ecVolumeOf(t, c.Stores[most], vid).Status().Local) {
				most = i
			}
		}
		h := (most + 1) % len(c.Stores)
		if _, err := ecVolumeOf(t, c.Stores[h], vid).Delete(ctx, id.Key, id.Cookie, needle.SizeAll); err != nil {
			t.Fatal(err)
		}
		gone[id] = true
		break
	}
	var out bytes.Buffer
	res, err := ECDecodeCluster(ctx, rpc.Insecure(), c.DirAddr, vid, 2, Output{W: &out})
	if err != nil {
		t.Fatalf("decode: %v\n%s", err, out.String())
	}
	for _, s := range c.Stores {
		v, err := s.Srv.Store().Volume(vid)
		if err != nil {
			continue
		}
		for id := range ids {
			if _, _, err := v.Read(id.Key, id.Cookie, needle.SizeSmall, nil); gone[id] != errors.Is(err, volume.ErrNotFound) {
				t.Fatalf("decoded replica on %s: photo %v (deleted %v): %v", s.HTTPAddr(), id, gone[id], err)
			}
		}
	}
	if len(res.Replicas) != 2 {
		t.Fatalf("decode placed %v", res.Replicas)
	}
}

// TestECLostJournalRefilled: a holder whose journal is lost starts with an
// empty one, serves nothing until it synced, and then holds every delete
// the others journaled.
func TestECLostJournalRefilled(t *testing.T) {
	ctx := context.Background()
	c, _, ids, vid := encodedCluster(t)
	gone := map[needle.PhotoID]bool{}
	for id := range ids {
		for _, s := range c.Stores {
			if _, err := ecVolumeOf(t, s, vid).Delete(ctx, id.Key, id.Cookie, needle.SizeAll); err != nil {
				t.Fatal(err)
			}
		}
		gone[id] = true
		if len(gone) == 2 {
			break
		}
	}
	s := c.Stores[1]
	s.Stop()
	if err := os.Remove(volume.ECJournalPath(s.DataDir, vid)); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	eventuallyServed(t, c, "the holder without its journal never serves the deleted photos", ids, gone)
	sameJournals(t, c, vid, 2)
}
