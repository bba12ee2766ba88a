package store

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net/http"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// answer is what a GET of an image path returned.
type answer struct {
	code                         int
	etag, lastMod, ctype, length string
	body                         []byte
}

func (ts *testServer) answerOf(t testing.TB, path string) answer {
	t.Helper()
	resp, body := ts.do(t, http.MethodGet, path, nil)
	return answer{resp.StatusCode, resp.Header.Get("ETag"), resp.Header.Get("Last-Modified"),
		resp.Header.Get("Content-Type"), resp.Header.Get("Content-Length"), body}
}

func sameAnswer(a, b answer) bool {
	return a.code == b.code && a.etag == b.etag && a.lastMod == b.lastMod && a.ctype == b.ctype &&
		a.length == b.length && bytes.Equal(a.body, b.body)
}

// copyFile copies path from one file system to another and syncs it.
func copyFile(t testing.TB, from, to vfs.FS, path string) {
	t.Helper()
	f, err := from.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, _ := f.Size()
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if err := vfs.WriteFileAtomic(to, path, b); err != nil {
		t.Fatal(err)
	}
}

func TestECVolumeServedLikeThePlainOne(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	so := Options{Dir: "/data", FS: fs}
	ts := startServer(t, so, ServerOptions{})
	ts.allocate(t, 1)
	r := rand.New(rand.NewPCG(14, 1))
	photos := ts.writeRandomPhotos(t, r, 1, 12, 0x100, 100, 37)
	enc := &storepb.EcEncodeRequest{Vid: 1, LargeBlock: 4096, SmallBlock: 512}
	_, err := ts.client.EcEncode(ctx, enc)
	wantCode(t, "EcEncode of a writable volume", err, codes.FailedPrecondition)
	if _, err := ts.client.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: 1, Reason: "full"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.client.Compact(ctx, &storepb.CompactRequest{Vid: 1}); err != nil {
		t.Fatal(err)
	}
	before := map[string]answer{}
	for _, p := range photos {
		for s := needle.SizeThumb; s <= needle.SizeLarge; s++ {
			before[p.path(s)] = ts.answerOf(t, p.path(s))
		}
	}
	resp, err := ts.client.EcEncode(ctx, enc)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetNeedles() != uint32(4*len(photos)) || resp.GetStraddling() == 0 {
		t.Fatalf("EcEncode: %+v", resp)
	}
	_, err = ts.client.EcEncode(ctx, enc)
	wantCode(t, "second EcEncode", err, codes.NotFound)
	if _, err := fs.Stat(volume.DatPath("/data", 1)); err == nil {
		t.Fatal("the .dat is still there after the encode")
	}
	check := func(ts *testServer, what string) {
		t.Helper()
		for path, want := range before {
			if got := ts.answerOf(t, path); !sameAnswer(got, want) {
				t.Fatalf("%s: %s answers %d %s, was %d %s", what, path, got.code, got.etag, want.code, want.etag)
			}
		}
	}
	check(ts, "after encode")

	// A delete goes to the journal and survives a restart.
	gone := photos[0]
	del, err := ts.client.Delete(ctx, &storepb.DeleteRequest{Vid: 1, Key: gone.id.Key, Cookie: gone.id.Cookie, SizeCode: uint32(needle.SizeAll)})
	if err != nil || del.GetDeletedCount() != 4 {
		t.Fatalf("Delete on an EC volume: %v %v", del, err)
	}
	for s := needle.SizeThumb; s <= needle.SizeLarge; s++ {
		delete(before, gone.path(s))
		if got := ts.answerOf(t, gone.path(s)); got.code != http.StatusNotFound {
			t.Fatalf("deleted %s: %d", gone.path(s), got.code)
		}
	}
	rd, err := ts.client.Read(ctx, &storepb.ReadRequest{Vid: 1, Key: photos[1].id.Key, Cookie: photos[1].id.Cookie, SizeCode: 2})
	if err != nil || !bytes.Equal(rd.GetNeedle().GetData(), photos[1].data[2]) {
		t.Fatalf("gRPC Read on an EC volume: %v", err)
	}
	ts.stop(t)
	ts = startServer(t, so, ServerOptions{})
	check(ts, "after restart")

	// EcShardRead answers ranges of the shards held, and refuses others.
	sr, err := ts.client.EcShardRead(ctx, &storepb.EcShardReadRequest{Vid: 1, Shard: 3, Offset: 100, Length: 300})
	if err != nil || len(sr.GetData()) != 300 {
		t.Fatalf("EcShardRead: %v", err)
	}
	_, err = ts.client.EcShardRead(ctx, &storepb.EcShardReadRequest{Vid: 1, Shard: 14, Length: 10})
	wantCode(t, "shard 14", err, codes.InvalidArgument)
	_, err = ts.client.EcShardRead(ctx, &storepb.EcShardReadRequest{Vid: 1, Shard: 2, Offset: 1 << 30, Length: 10})
	wantCode(t, "range past the shard", err, codes.InvalidArgument)
	_, err = ts.client.EcShardRead(ctx, &storepb.EcShardReadRequest{Vid: 1, Shard: 2, Length: 17 << 20})
	wantCode(t, "17 MiB", err, codes.InvalidArgument)
	_, err = ts.client.EcShardRead(ctx, &storepb.EcShardReadRequest{Vid: 2, Shard: 2, Length: 10})
	wantCode(t, "unknown vid", err, codes.NotFound)
	ts.stop(t)

	// Split the shards: store B holds 7..13, store A keeps 4..6 and reads
	// the rest from B. Every photo still answers as before.
	fsB := vfs.NewMem()
	fsB.MkdirAll("/data", 0o755)
	for _, p := range []string{volume.ECIndexPath("/data", 1), volume.ECJournalPath("/data", 1)} {
		copyFile(t, fs, fsB, p)
	}
	for i := 7; i < volume.ECShards; i++ {
		copyFile(t, fs, fsB, volume.ECShardPath("/data", 1, i))
		fs.Remove(volume.ECShardPath("/data", 1, i))
	}
	for i := 0; i < 4; i++ {
		fs.Remove(volume.ECShardPath("/data", 1, i))
	}
	tsB := startServer(t, Options{Dir: "/data", FS: fsB}, ServerOptions{})
	_, err = tsB.client.EcShardRead(ctx, &storepb.EcShardReadRequest{Vid: 1, Shard: 2, Length: 10})
	wantCode(t, "shard not held", err, codes.NotFound)
	peers := ShardPeers{Holders: func(vid uint32, shard int) []StoreShardClient {
		if shard >= 7 {
			return []StoreShardClient{tsB.client}
		}
		return nil
	}}
	tsA := startServer(t, Options{Dir: "/data", FS: fs, ShardPeers: peers}, ServerOptions{})
	check(tsA, "with 4 shards lost and 7 on a peer")
	e, err := tsA.srv.Store().ECVolume(1)
	if err != nil {
		t.Fatal(err)
	}
	if st := e.Status(); st.Degraded == 0 || len(st.Local) != 3 {
		t.Fatalf("status %+v: want degraded reads over 3 local shards", st)
	}
	// With B gone too, photos on lost shards answer 503, not a wrong byte.
	tsB.stop(t)
	unavailable := 0
	for path, want := range before {
		got := tsA.answerOf(t, path)
		switch {
		case got.code == http.StatusServiceUnavailable:
			unavailable++
		case !sameAnswer(got, want):
			t.Fatalf("%s with the peer down: %d", path, got.code)
		}
	}
	if unavailable == 0 {
		t.Fatal("no read failed with 11 of 14 shards gone")
	}
}

func TestECDecodeInPlace(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	so := Options{Dir: "/data", FS: fs}
	ts := startServer(t, so, ServerOptions{})
	ts.allocate(t, 1)
	r := rand.New(rand.NewPCG(14, 2))
	photos := ts.writeRandomPhotos(t, r, 1, 8, 0x200, 150, 29)
	if _, err := ts.client.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.client.Compact(ctx, &storepb.CompactRequest{Vid: 1}); err != nil {
		t.Fatal(err)
	}
	_, err := ts.client.EcDecode(ctx, &storepb.EcDecodeRequest{Vid: 1})
	wantCode(t, "EcDecode of a plain volume", err, codes.NotFound)
	if _, err := ts.client.EcEncode(ctx, &storepb.EcEncodeRequest{Vid: 1, LargeBlock: 2048, SmallBlock: 256}); err != nil {
		t.Fatal(err)
	}
	gone := photos[3]
	if _, err := ts.client.Delete(ctx, &storepb.DeleteRequest{Vid: 1, Key: gone.id.Key, Cookie: gone.id.Cookie, SizeCode: uint32(needle.SizeAll)}); err != nil {
		t.Fatal(err)
	}
	before := map[string]answer{}
	for _, p := range photos {
		for s := needle.SizeThumb; s <= needle.SizeLarge; s++ {
			before[p.path(s)] = ts.answerOf(t, p.path(s))
		}
	}
	resp, err := ts.client.EcDecode(ctx, &storepb.EcDecodeRequest{Vid: 1})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDeletes() != 1 || resp.GetReclaimedBytes() == 0 || resp.GetVolume().GetState() != storepb.VolumeState_VOLUME_STATE_SEALED ||
		resp.GetVolume().GetNeedleCount() != uint64(4*(len(photos)-1)) {
		t.Fatalf("EcDecode: %+v", resp)
	}
	if _, err := fs.Stat(volume.ECIndexPath("/data", 1)); err == nil {
		t.Fatal("the ecx is still there after the decode")
	}
	for _, ts := range []*testServer{ts, nil} {
		if ts == nil {
			ts = startServer(t, so, ServerOptions{})
		}
		for path, want := range before {
			if got := ts.answerOf(t, path); !sameAnswer(got, want) {
				t.Fatalf("%s after decode: %d %s, was %d %s", path, got.code, got.etag, want.code, want.etag)
			}
		}
		if _, err := ts.srv.Store().Volume(1); err != nil {
			t.Fatal(err)
		}
		ts.stop(t)
	}
}

func TestECShardsPlacedOnThreeStores(t *testing.T) {
	ctx := context.Background()
	var a, b, c *testServer
	holders := map[*testServer][]int{}
	peersOf := func(self **testServer) ShardPeers {
		return ShardPeers{Holders: func(vid uint32, shard int) []StoreShardClient {
			var out []StoreShardClient
			for ts, shards := range holders {
				if ts != *self && slices.Contains(shards, shard) {
					out = append(out, ts.client)
				}
			}
			return out
		}}
	}
	a = startServer(t, Options{Dir: "/data", FS: vfs.NewMem(), ShardPeers: peersOf(&a)}, ServerOptions{})
	b = startServer(t, Options{Dir: "/data", FS: vfs.NewMem(), ShardPeers: peersOf(&b)}, ServerOptions{})
	c = startServer(t, Options{Dir: "/data", FS: vfs.NewMem(), ShardPeers: peersOf(&c)}, ServerOptions{})
	a.allocate(t, 1)
	r := rand.New(rand.NewPCG(14, 3))
	photos := a.writeRandomPhotos(t, r, 1, 10, 0x300, 120, 31)
	a.client.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: 1})
	if _, err := a.client.Compact(ctx, &storepb.CompactRequest{Vid: 1}); err != nil {
		t.Fatal(err)
	}
	before := map[string]answer{}
	for _, p := range photos {
		for s := needle.SizeThumb; s <= needle.SizeLarge; s++ {
			before[p.path(s)] = a.answerOf(t, p.path(s))
		}
	}
	srcA := a.srv.GRPCAddr().String()
	// B holds a plain replica, which the EC shards it takes over replace.
	b.readOnlyCopyOf(t, 1, srcA)
	_, err := c.client.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: 1, Shards: []uint32{1}, SourceGrpcAddr: srcA})
	wantCode(t, "mount from a store without the EC volume", err, codes.Unavailable)
	if _, err := a.client.EcEncode(ctx, &storepb.EcEncodeRequest{Vid: 1, LargeBlock: 2048, SmallBlock: 256}); err != nil {
		t.Fatal(err)
	}
	holders[a] = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}

	_, err = b.client.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: 1, Shards: []uint32{14}, SourceGrpcAddr: srcA})
	wantCode(t, "mount of shard 14", err, codes.InvalidArgument)
	_, err = b.client.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: 2, Shards: []uint32{1}, SourceGrpcAddr: srcA})
	wantCode(t, "mount of a volume the source lacks", err, codes.Unavailable)
	mb, err := b.client.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: 1, Shards: []uint32{5, 6, 7, 8, 9}, SourceGrpcAddr: srcA})
	if err != nil || !slices.Equal(mb.GetVolume().GetEcShardIds(), []uint32{5, 6, 7, 8, 9}) {
		t.Fatalf("mount on B: %v %v", mb, err)
	}
	holders[b] = []int{5, 6, 7, 8, 9}
	if _, err := b.srv.Store().Volume(1); err == nil {
		t.Fatal("B still serves its plain replica")
	}
	if st, err := b.client.VolumeStatus(ctx, &storepb.VolumeStatusRequest{Vid: 1}); err != nil || st.GetVolumes()[0].GetState() != storepb.VolumeState_VOLUME_STATE_EC {
		t.Fatalf("B's volume 1: %v %v", st, err)
	}
	if _, err := c.client.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: 1, Shards: []uint32{10, 11, 12, 13}, SourceGrpcAddr: srcA}); err != nil {
		t.Fatal(err)
	}
	holders[c] = []int{10, 11, 12, 13}
	da, err := a.client.EcShardDelete(ctx, &storepb.EcShardDeleteRequest{Vid: 1, Shards: []uint32{5, 6, 7, 8, 9, 10, 11, 12, 13}})
	if err != nil || !slices.Equal(da.GetVolume().GetEcShardIds(), []uint32{0, 1, 2, 3, 4}) {
		t.Fatalf("delete on A: %v %v", da, err)
	}
	holders[a] = []int{0, 1, 2, 3, 4}
	_, err = a.client.EcShardRead(ctx, &storepb.EcShardReadRequest{Vid: 1, Shard: 7, Length: 8})
	wantCode(t, "read of a shard given away", err, codes.NotFound)

	for _, ts := range []*testServer{a, b, c} {
		for path, want := range before {
			if got := ts.answerOf(t, path); !sameAnswer(got, want) {
				t.Fatalf("%s on %s: %d %s, was %d %s", path, ts.base, got.code, got.etag, want.code, want.etag)
			}
		}
	}
	// A loses shard 0: its needles are rebuilt from A's 1..4, B's and C's.
	if _, err := a.client.EcShardDelete(ctx, &storepb.EcShardDeleteRequest{Vid: 1, Shards: []uint32{0}}); err != nil {
		t.Fatal(err)
	}
	holders[a] = []int{1, 2, 3, 4}
	for path, want := range before {
		if got := a.answerOf(t, path); !sameAnswer(got, want) {
			t.Fatalf("%s on A without shard 0: %d", path, got.code)
		}
	}
	e, _ := a.srv.Store().ECVolume(1)
	if e.Status().Degraded == 0 {
		t.Fatal("no degraded read on A")
	}
	// With C down too, 9 shards are left: what lies on shard 0 is
	// unavailable (503), everything else still reads.
	c.stop(t)
	unavailable := 0
	for path, want := range before {
		got := a.answerOf(t, path)
		switch {
		case got.code == http.StatusServiceUnavailable:
			unavailable++
		case !sameAnswer(got, want):
			t.Fatalf("%s with C down: %d", path, got.code)
		}
	}
	if unavailable == 0 || unavailable == len(before) {
		t.Fatalf("%d of %d reads unavailable with 9 shards left", unavailable, len(before))
	}
}

// EcShardDelete with remove_volume removes every EC file of the volume,
// index and journal included: the store no longer serves or reports it.
func TestECRemoveVolume(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	a := startServer(t, Options{Dir: "/data", FS: fs}, ServerOptions{})
	a.allocate(t, 1)
	a.allocate(t, 2)
	r := rand.New(rand.NewPCG(5, 9))
	photos := a.writeRandomPhotos(t, r, 1, 6, 0x500, 100, 17)
	plain := randomPhoto(r, 2, 0x600, 90)
	a.writePhoto(t, plain)
	a.client.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: 1})
	if _, err := a.client.Compact(ctx, &storepb.CompactRequest{Vid: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.client.EcEncode(ctx, &storepb.EcEncodeRequest{Vid: 1, LargeBlock: 2048, SmallBlock: 256}); err != nil {
		t.Fatal(err)
	}
	_, err := a.client.EcShardDelete(ctx, &storepb.EcShardDeleteRequest{Vid: 2, RemoveVolume: true})
	wantCode(t, "remove_volume of a plain volume", err, codes.NotFound)
	if _, err := a.client.EcShardDelete(ctx, &storepb.EcShardDeleteRequest{Vid: 1, RemoveVolume: true}); err != nil {
		t.Fatalf("remove EC volume 1: %v", err)
	}
	if _, err := a.srv.Store().ECVolume(1); err == nil {
		t.Fatal("EC volume 1 still open")
	}
	for _, p := range []string{volume.ECIndexPath("/data", 1), volume.ECJournalPath("/data", 1), volume.ECShardPath("/data", 1, 0), volume.ECShardPath("/data", 1, 13)} {
		if _, err := fs.Stat(p); err == nil {
			t.Errorf("%s is still there", p)
		}
	}
	for _, p := range photos {
		if got := a.answerOf(t, p.path(needle.SizeThumb)); got.code != http.StatusNotFound {
			t.Fatalf("%s after the removal: HTTP %d", p.path(needle.SizeThumb), got.code)
		}
	}
	st, err := a.client.VolumeStatus(ctx, &storepb.VolumeStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range st.GetVolumes() {
		if v.GetVid() == 1 {
			t.Fatalf("volume 1 still listed: %v", v)
		}
	}
	if got := a.answerOf(t, plain.path(needle.SizeThumb)); got.code != http.StatusOK {
		t.Fatalf("plain volume 2: HTTP %d", got.code)
	}
	_, err = a.client.EcShardDelete(ctx, &storepb.EcShardDeleteRequest{Vid: 1, RemoveVolume: true})
	wantCode(t, "second removal", err, codes.NotFound)
}

// readOnlyCopyOf has s replicate volume vid from the store at src over
// gRPC, then marks its copy read-only.
func (s *testServer) readOnlyCopyOf(t *testing.T, vid uint32, src string) {
	t.Helper()
	ctx := context.Background()
	rs, err := s.client.ReplicateVolume(ctx, &storepb.ReplicateVolumeRequest{Vid: vid, SourceGrpcAddr: src})
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := rs.Recv()
		if err != nil {
			t.Fatalf("replicate volume %d from %s: %v", vid, src, err)
		}
		if m.GetPhase() == "done" {
			break
		}
	}
	if _, err := s.client.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: vid}); err != nil {
		t.Fatal(err)
	}
}
