package store

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// staticHolders is an ECHolderFinder over test servers: every server in
// the set but the caller, or an error while fail is set.
type staticHolders struct {
	mu      sync.Mutex
	servers []**testServer
	self    **testServer
	fail    error
}

func (h *staticHolders) ECHolders(ctx context.Context, vid uint32) ([]ECPeer, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fail != nil {
		return nil, h.fail
	}
	var out []ECPeer
	for _, ts := range h.servers {
		if ts != h.self && *ts != nil {
			out = append(out, ECPeer{Addr: (*ts).srv.GRPCAddr().String(), Client: (*ts).client})
		}
	}
	return out, nil
}

func (h *staticHolders) setFail(err error) {
	h.mu.Lock()
	h.fail = err
	h.mu.Unlock()
}

// sealedPhotos writes photos into volume 1 of ts and seals it.
func sealedPhotos(t *testing.T, ts *testServer, n int) []*photo {
	t.Helper()
	ctx := context.Background()
	ts.allocate(t, 1)
	r := rand.New(rand.NewPCG(14, 9))
	photos := ts.writeRandomPhotos(t, r, 1, n, 0x500, 100, 29)
	if _, err := ts.client.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: 1, Reason: "full"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.client.Compact(ctx, &storepb.CompactRequest{Vid: 1}); err != nil {
		t.Fatal(err)
	}
	return photos
}

func deleteOn(t *testing.T, ts *testServer, p *photo) {
	t.Helper()
	resp, err := ts.client.Delete(context.Background(), &storepb.DeleteRequest{Vid: 1, Key: p.id.Key, Cookie: p.id.Cookie, SizeCode: uint32(needle.SizeAll)})
	if err != nil || resp.GetDeletedCount() == 0 {
		t.Fatalf("delete on %s: %v %v", ts.base, resp, err)
	}
}

// TestECDeletesDuringPlacementReachEveryHolder: while shards are placed, a
// delete reaches only the encoder's EC journal, another only a plain
// replica that the placement then replaces; after the syncs that end a
// placement, every holder journals both and serves neither.
func TestECDeletesDuringPlacementReachEveryHolder(t *testing.T) {
	ctx := context.Background()
	var a, b, c *testServer
	all := []**testServer{&a, &b, &c}
	start := func(self **testServer) *testServer {
		return startServer(t, Options{Dir: "/data", FS: vfs.NewMem(), ECHolders: &staticHolders{servers: all, self: self}}, ServerOptions{})
	}
	a, b, c = start(&a), start(&b), start(&c)
	photos := sealedPhotos(t, a, 8)
	srcA := a.srv.GRPCAddr().String()
	b.readOnlyCopyOf(t, 1, srcA)
	if _, err := a.client.EcEncode(ctx, &storepb.EcEncodeRequest{Vid: 1, LargeBlock: 2048, SmallBlock: 256}); err != nil {
		t.Fatal(err)
	}
	// The placement runs: one delete reaches A's EC journal only, one B's
	// plain replica only.
	deleteOn(t, a, photos[0])
	deleteOn(t, b, photos[1])
	if _, err := c.client.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: 1, Shards: []uint32{10, 11, 12, 13}, SourceGrpcAddr: srcA}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: 1, Shards: []uint32{5, 6, 7, 8, 9}, SourceGrpcAddr: srcA}); err != nil {
		t.Fatal(err)
	}
	eb, err := b.srv.Store().ECVolume(1)
	if err != nil {
		t.Fatal(err)
	}
	if !eb.HasDelete(volume.ECDelete{Key: photos[1].id.Key, Cookie: photos[1].id.Cookie, Size: needle.SizeAll}) {
		t.Fatal("the plain replica's delete was lost when its EC shards replaced it")
	}
	// What a cluster encode ends with: every holder syncs.
	for _, ts := range []*testServer{c, b, a} {
		if _, err := ts.client.EcIndexSync(ctx, &storepb.EcIndexSyncRequest{Vid: 1}); err != nil {
			t.Fatal(err)
		}
	}
	var digest volume.JournalDigest
	for i, ts := range []*testServer{a, b, c} {
		e, err := ts.srv.Store().ECVolume(1)
		if err != nil {
			t.Fatal(err)
		}
		d := e.JournalDigest()
		if d.Count != 2 || i > 0 && d != digest {
			t.Fatalf("holder %d journal %+v, holder 0 %+v", i, d, digest)
		}
		digest = d
		for _, p := range photos[:2] {
			if got := ts.answerOf(t, p.path(needle.SizeSmall)); got.code != http.StatusNotFound {
				t.Fatalf("holder %d serves deleted %v: %d", i, p.id, got.code)
			}
		}
		// A holds every shard (the others would read theirs from peers).
		if !e.Has(photos[2].id.Key, needle.SizeSmall) || i == 0 && ts.answerOf(t, photos[2].path(needle.SizeSmall)).code != http.StatusOK {
			t.Fatalf("holder %d: live photo not served", i)
		}
	}
}

// TestECVolumeHeldUntilSynced: a store opening an EC volume serves none of
// its photos (503 volume-unavailable, so readers fail over) until a sync
// with the other holders ran; then it serves them, without the photos
// another holder deleted meanwhile.
func TestECVolumeHeldUntilSynced(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	var a, b *testServer
	all := []**testServer{&a, &b}
	holdersA := &staticHolders{servers: all, self: &a}
	a = startServer(t, Options{Dir: "/data", FS: fs, ECHolders: holdersA}, ServerOptions{})
	b = startServer(t, Options{Dir: "/data", FS: vfs.NewMem(), ECHolders: &staticHolders{servers: all, self: &b}}, ServerOptions{})
	photos := sealedPhotos(t, a, 6)
	if _, err := a.client.EcEncode(ctx, &storepb.EcEncodeRequest{Vid: 1, LargeBlock: 2048, SmallBlock: 256}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: 1, Shards: []uint32{0, 1, 2, 3, 4, 5, 6}, SourceGrpcAddr: a.srv.GRPCAddr().String()}); err != nil {
		t.Fatal(err)
	}
	// A goes down; B takes a delete A misses.
	a.stop(t)
	a = nil
	deleteOn(t, b, photos[0])
	// A comes back without a directory to ask: it holds the volume.
	holdersA.setFail(errors.New("directory unreachable"))
	a = startServer(t, Options{Dir: "/data", FS: fs, ECHolders: holdersA}, ServerOptions{})
	for _, p := range photos[:2] {
		resp, _ := a.do(t, http.MethodGet, p.path(needle.SizeSmall), nil)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Haybale-Error") != ErrorVolumeUnavailable {
			t.Fatalf("unsynced volume answers %d %q", resp.StatusCode, resp.Header.Get("X-Haybale-Error"))
		}
	}
	_, err := a.client.EcIndexSync(ctx, &storepb.EcIndexSyncRequest{Vid: 1})
	wantCode(t, "sync without a directory", err, codes.Unavailable)
	_, err = a.client.EcIndexSync(ctx, &storepb.EcIndexSyncRequest{Vid: 0})
	wantCode(t, "sync of vid 0", err, codes.InvalidArgument)
	_, err = a.client.EcIndexSync(ctx, &storepb.EcIndexSyncRequest{Vid: 9})
	wantCode(t, "sync of a volume not here", err, codes.NotFound)
	holdersA.setFail(nil)
	resp, err := a.client.EcIndexSync(ctx, &storepb.EcIndexSyncRequest{Vid: 1})
	// (The store's own periodic sync may have merged the delete first.)
	if err != nil || resp.GetAddedDeletes() > 1 || len(resp.GetReached()) != 1 {
		t.Fatalf("sync: %v %v", resp, err)
	}
	if got := a.answerOf(t, photos[0].path(needle.SizeSmall)); got.code != http.StatusNotFound {
		t.Fatalf("deleted photo after the sync: %d", got.code)
	}
	if got := a.answerOf(t, photos[1].path(needle.SizeSmall)); got.code != http.StatusOK {
		t.Fatalf("live photo after the sync: %d", got.code)
	}
	if resp.GetVolume().GetEcDeletedCount() != 1 || resp.GetVolume().GetEcJournalDigest() == 0 {
		t.Fatalf("synced volume info %v", resp.GetVolume())
	}
}

// TestECJournalHeaderRepairedAtOpen: a store whose EC journal has a
// damaged header keeps its intact deletes under a fresh header when it
// opens, rather than failing the volume or forgetting them.
func TestECJournalHeaderRepairedAtOpen(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	ts := startServer(t, Options{Dir: "/data", FS: fs}, ServerOptions{})
	photos := sealedPhotos(t, ts, 4)
	if _, err := ts.client.EcEncode(ctx, &storepb.EcEncodeRequest{Vid: 1, LargeBlock: 2048, SmallBlock: 256}); err != nil {
		t.Fatal(err)
	}
	deleteOn(t, ts, photos[0])
	ts.stop(t)
	path := volume.ECJournalPath("/data", 1)
	f, err := fs.OpenReadWrite(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("XX"), 0); err != nil {
		t.Fatal(err)
	}
	f.Sync()
	f.Close()
	ts = startServer(t, Options{Dir: "/data", FS: fs}, ServerOptions{})
	e, err := ts.srv.Store().ECVolume(1)
	if err != nil {
		t.Fatalf("EC volume with a damaged journal header: %v", err)
	}
	if st := e.Status(); st.Deletes != 1 {
		t.Fatalf("repaired journal holds %d deletes, want 1", st.Deletes)
	}
	if got := ts.answerOf(t, photos[0].path(needle.SizeSmall)); got.code != http.StatusNotFound {
		t.Fatalf("deleted photo after the repair: %d", got.code)
	}
	if got := ts.answerOf(t, photos[1].path(needle.SizeSmall)); got.code != http.StatusOK {
		t.Fatalf("live photo after the repair: %d", got.code)
	}
}
