package tools

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/testcluster"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

func TestECEncodeVerifyRebuildDecode(t *testing.T) {
	ctx := context.Background()
	dir, warm := t.TempDir(), t.TempDir()
	live := buildVolume(t, dir, 40, 900)
	var out, prog bytes.Buffer
	res, err := ECEncode(ctx, volume.DatPath(dir, 7), warm, ECEncodeOptions{LargeBlock: 8192, SmallBlock: 1024}, Output{W: &out, Progress: &prog})
	if err != nil {
		t.Fatal(err)
	}
	if res.Needles != 4*len(live) || !strings.Contains(out.String(), "straddling:") || !strings.Contains(prog.String(), "100%") {
		t.Fatalf("encode: %+v\n%s\n%s", res, out.String(), prog.String())
	}
	out.Reset()
	if _, err := ECVerify(ctx, warm, 0, Output{W: &out}); err != nil || !strings.Contains(out.String(), "result:   ok") {
		t.Fatalf("clean verify: %v\n%s", err, out.String())
	}

	// Lose two shards and damage a third: verify finds all three.
	for _, i := range []int{4, 11} {
		if err := os.Remove(volume.ECShardPath(warm, 7, i)); err != nil {
			t.Fatal(err)
		}
	}
	orig, _ := os.ReadFile(volume.ECShardPath(warm, 7, 2))
	damaged := slices.Clone(orig)
	for i := volume.ECHeaderSize + 100; i < len(damaged); i += 4000 {
		damaged[i] ^= 0xFF
	}
	os.WriteFile(volume.ECShardPath(warm, 7, 2), damaged, 0o644)
	out.Reset()
	reps, err := ECVerify(ctx, warm, 7, Output{W: &out, JSON: true})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("verify of damaged shards: %v", err)
	}
	var js []volume.ECReport
	if err := json.Unmarshal(out.Bytes(), &js); err != nil || len(js) != 1 {
		t.Fatalf("json: %v\n%s", err, out.String())
	}
	if !slices.Equal(js[0].Missing, []int{4, 11}) || !slices.Equal(js[0].Damaged, []int{2}) || js[0].Unreadable != 0 || !reps[0].Recoverable() {
		t.Fatalf("report %+v", js[0])
	}

	out.Reset()
	rres, err := ECRebuild(ctx, warm, 0, Output{W: &out})
	if err != nil || len(rres) != 1 || !slices.Equal(rres[0].Rebuilt, []int{2, 4, 11}) {
		t.Fatalf("rebuild: %+v %v\n%s", rres, err, out.String())
	}
	if got, _ := os.ReadFile(volume.ECShardPath(warm, 7, 2)); !bytes.Equal(got, orig) {
		t.Fatal("rebuilt shard 2 differs from the original")
	}
	if _, err := ECVerify(ctx, warm, 0, Output{W: &out}); err != nil {
		t.Fatalf("verify after rebuild: %v", err)
	}

	// Decode into a fresh folder: every live image reads the same.
	dec := t.TempDir()
	out.Reset()
	if _, err := ECDecode(ctx, warm, 0, volume.DatPath(dec, 7), Output{W: &out}); err != nil {
		t.Fatalf("decode: %v\n%s", err, out.String())
	}
	checkLive(t, dec, live, 900)

	// Five shards lost: verify and rebuild report damage (exit status 2).
	for _, i := range []int{0, 1, 3, 5, 6} {
		os.Remove(volume.ECShardPath(warm, 7, i))
	}
	if _, err := ECVerify(ctx, warm, 0, Output{W: &out}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("verify with 5 lost: %v", err)
	}
	out.Reset()
	if _, err := ECRebuild(ctx, warm, 0, Output{W: &out}); !errors.Is(err, ErrCorrupt) || !strings.Contains(out.String(), "cannot rebuild") {
		t.Fatalf("rebuild with 5 lost: %v\n%s", err, out.String())
	}
	if _, err := ECDecode(ctx, warm, 0, filepath.Join(t.TempDir(), "7.dat"), Output{W: &out}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("decode with 5 lost: %v", err)
	}
	if _, err := ECVerify(ctx, t.TempDir(), 0, Output{W: &out}); err == nil || errors.Is(err, ErrCorrupt) {
		t.Fatalf("verify of a folder without EC files: %v", err)
	}
}

func TestECEncodeOnline(t *testing.T) {
	ctx := context.Background()
	c := testcluster.Start(t, testcluster.Options{Stores: 1})
	cl, err := client.New(client.Options{Directory: c.DirAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ids := map[needle.PhotoID]int{}
	for k := 0; k < 16; k++ {
		ids[writeOnline(t, cl, k)] = k
	}
	var vid uint32
	for id := range ids {
		vid = id.Vid
	}
	s := c.Stores[0]
	grpcAddr := s.Srv.GRPCAddr().String()
	var out bytes.Buffer
	if _, err := ECEncodeOnline(ctx, rpc.Insecure(), grpcAddr, vid, ECEncodeOptions{}, Output{W: &out}); err == nil {
		t.Fatal("online encode of a writable volume succeeded")
	}
	if _, err := c.Directory.MarkReadOnly(ctx, &directorypb.DirectoryMarkReadOnlyRequest{Vid: vid, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	c.Eventually("volume read-only on the store", func() error {
		v, err := s.Srv.Store().Volume(vid)
		if err != nil {
			return err
		}
		if st, _ := v.State(); st == volume.StateWritable {
			return errors.New("still writable")
		}
		return nil
	})
	if _, err := CompactOnline(ctx, rpc.Insecure(), grpcAddr, vid, Output{W: &out}); err != nil {
		t.Fatal(err)
	}
	etags := map[string]string{}
	for id := range ids {
		if id.Vid != vid {
			continue
		}
		for _, sz := range needle.PhotoSizes {
			resp, err := http.Get("http://" + s.HTTPAddr() + needle.ImagePath(id, sz, ""))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			etags[needle.ImagePath(id, sz, "")] = resp.Header.Get("ETag")
		}
	}
	res, err := ECEncodeOnline(ctx, rpc.Insecure(), grpcAddr, vid, ECEncodeOptions{LargeBlock: 64 << 10, SmallBlock: 4 << 10}, Output{W: &out, JSON: true})
	if err != nil || res.Needles == 0 {
		t.Fatalf("online encode: %+v %v", res, err)
	}
	if _, err := s.Srv.Store().ECVolume(vid); err != nil {
		t.Fatal(err)
	}
	for id, k := range ids {
		if id.Vid != vid {
			continue
		}
		for i, im := range onlineImages(k) {
			resp, err := http.Get("http://" + s.HTTPAddr() + needle.ImagePath(id, im.Size, ""))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !bytes.Equal(b, onlineImages(k)[i].Data) ||
				resp.Header.Get("ETag") != etags[needle.ImagePath(id, im.Size, "")] {
				t.Fatalf("%v size %v after online encode: HTTP %d, ETag %s", id, im.Size, resp.StatusCode, resp.Header.Get("ETag"))
			}
		}
	}
	// The store reports the EC volume in its heartbeats: the directory
	// switches the volume to EC, and clients read and delete through it.
	c.Eventually("directory sees the EC volume", func() error {
		resp, err := c.Directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
		if err != nil {
			return err
		}
		if resp.GetState() != storepb.VolumeState_VOLUME_STATE_EC {
			return fmt.Errorf("state %v", resp.GetState())
		}
		return nil
	})
	var gone needle.PhotoID
	for id, k := range ids {
		if id.Vid != vid {
			continue
		}
		f, err := cl.Read(ctx, id, needle.SizeMedium)
		if err != nil || !bytes.Equal(f.Data, onlineImages(k)[needle.SizeMedium].Data) {
			t.Fatalf("client read of %v from the EC volume: %v", id, err)
		}
		gone = id
	}
	if err := cl.Delete(ctx, gone); err != nil {
		t.Fatalf("client delete on the EC volume: %v", err)
	}
	if code, _ := httpGet(t, s.HTTPAddr(), gone, needle.SizeThumb); code != http.StatusNotFound {
		t.Fatalf("deleted photo answers %d", code)
	}
	// Decode back in place: a sealed plain volume without the deleted photo.
	dres, err := ECDecodeOnline(ctx, rpc.Insecure(), grpcAddr, vid, Output{W: &out})
	if err != nil || dres.Deletes != 1 || dres.Images != uint64(res.Needles)-4 {
		t.Fatalf("online decode: %+v %v", dres, err)
	}
	for id, k := range ids {
		if id.Vid != vid {
			continue
		}
		code, b := httpGet(t, s.HTTPAddr(), id, needle.SizeLarge)
		if id == gone && code != http.StatusNotFound || id != gone && (code != http.StatusOK || !bytes.Equal(b, onlineImages(k)[needle.SizeLarge].Data)) {
			t.Fatalf("%v after online decode: HTTP %d", id, code)
		}
	}
	if _, err := ECDecodeOnline(ctx, rpc.Insecure(), grpcAddr, vid, Output{W: &out}); err == nil || errors.Is(err, ErrCorrupt) {
		t.Fatalf("second online decode: %v", err)
	}
}

func TestECShardsAcrossClusterStores(t *testing.T) {
	ctx := context.Background()
	c, cl, ids, vid := clusterWithPhotos(t, 3, 1, 24)
	reps, _, err := cl.Lookup(ctx, vid)
	if err != nil || len(reps) != 1 {
		t.Fatalf("lookup: %v %v", reps, err)
	}
	var src *testcluster.Store
	var others []*testcluster.Store
	for _, s := range c.Stores {
		if s.Srv.GRPCAddr().String() == reps[0].GRPCAddr {
			src = s
		} else {
			others = append(others, s)
		}
	}
	if src == nil {
		t.Fatalf("no store at %s", reps[0].GRPCAddr)
	}
	srcAddr := src.Srv.GRPCAddr().String()
	if _, err := c.Directory.MarkReadOnly(ctx, &directorypb.DirectoryMarkReadOnlyRequest{Vid: vid, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	c.Eventually("volume read-only on the store", func() error {
		v, err := src.Srv.Store().Volume(vid)
		if err != nil {
			return err
		}
		if st, _ := v.State(); st == volume.StateWritable {
			return errors.New("still writable")
		}
		return nil
	})
	var out bytes.Buffer
	if _, err := CompactOnline(ctx, rpc.Insecure(), srcAddr, vid, Output{W: &out}); err != nil {
		t.Fatal(err)
	}
	if _, err := ECEncodeOnline(ctx, rpc.Insecure(), srcAddr, vid, ECEncodeOptions{LargeBlock: 64 << 10, SmallBlock: 2 << 10}, Output{W: &out}); err != nil {
		t.Fatal(err)
	}
	// Spread the shards 5/5/4 over the three stores.
	sc := func(s *testcluster.Store) storepb.StoreClient {
		conn, err := grpc.NewClient(s.Srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return storepb.NewStoreClient(conn)
	}
	for i, shards := range [][]uint32{{5, 6, 7, 8, 9}, {10, 11, 12, 13}} {
		if _, err := sc(others[i]).EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: vid, Shards: shards, SourceGrpcAddr: srcAddr}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sc(src).EcShardDelete(ctx, &storepb.EcShardDeleteRequest{Vid: vid, Shards: []uint32{5, 6, 7, 8, 9, 10, 11, 12, 13}}); err != nil {
		t.Fatal(err)
	}
	c.Eventually("directory sees three EC holders", func() error {
		resp, err := c.Directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
		if err != nil {
			return err
		}
		if resp.GetState() != storepb.VolumeState_VOLUME_STATE_EC || len(resp.GetReplicas()) != 3 {
			return fmt.Errorf("state %v, %d holders", resp.GetState(), len(resp.GetReplicas()))
		}
		return nil
	})
	check := func(what string, stores []*testcluster.Store) {
		t.Helper()
		for id, k := range ids {
			if id.Vid != vid {
				continue
			}
			for _, s := range stores {
				for i, im := range onlineImages(k) {
					code, b := httpGet(t, s.HTTPAddr(), id, needle.SizeCode(i))
					if code != http.StatusOK || !bytes.Equal(b, im.Data) {
						t.Fatalf("%s: %v size %v on %s: HTTP %d", what, id, im.Size, s.HTTPAddr(), code)
					}
				}
			}
			f, err := cl.Read(ctx, id, needle.SizeSmall)
			if err != nil || !bytes.Equal(f.Data, onlineImages(k)[needle.SizeSmall].Data) {
				t.Fatalf("%s: client read of %v: %v", what, id, err)
			}
		}
	}
	check("spread over 3 stores", c.Stores)
	// The store holding only parity goes down: nothing is lost.
	others[1].Stop()
	check("parity store down", []*testcluster.Store{src, others[0]})
	e, err := others[0].Srv.Store().ECVolume(vid)
	if err != nil {
		t.Fatal(err)
	}
	if st := e.Status(); st.Reads == 0 || len(st.Local) != 5 {
		t.Fatalf("holder of 5..9: %+v", st)
	}
}

func TestECEncodeCluster(t *testing.T) {
	ctx := context.Background()
	c, cl, ids, vid := clusterWithPhotos(t, 3, 2, 20)
	var out bytes.Buffer
	if _, err := ECEncodeCluster(ctx, rpc.Insecure(), c.DirAddr, vid, ECEncodeOptions{}, Output{W: &out}); err == nil {
		t.Fatal("cluster encode of a writable volume succeeded")
	}
	if reps := sealVolume(t, c, cl, vid, &out); len(reps) != 2 {
		t.Fatalf("lookup: %v", reps)
	}
	res, err := ECEncodeCluster(ctx, rpc.Insecure(), c.DirAddr, vid, ECEncodeOptions{LargeBlock: 32 << 10, SmallBlock: 1 << 10}, Output{W: &out})
	if err != nil {
		t.Fatalf("cluster encode: %v\n%s", err, out.String())
	}
	if len(res.Shards) != 3 || res.SurvivesStores != 0 || res.SurvivesRacks != 0 || len(res.Shards[res.Source]) != 5 {
		t.Fatalf("placement %+v", res)
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
	for _, s := range c.Stores {
		if _, err := s.Srv.Store().Volume(vid); err == nil {
			t.Fatalf("store %s still holds a plain replica", s.HTTPAddr())
		}
		e, err := s.Srv.Store().ECVolume(vid)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(e.Status().Local); n != 4 && n != 5 {
			t.Fatalf("store %s holds shards %v", s.HTTPAddr(), e.Status().Local)
		}
		for id, k := range ids {
			if id.Vid != vid {
				continue
			}
			code, b := httpGet(t, s.HTTPAddr(), id, needle.SizeMedium)
			if code != http.StatusOK || !bytes.Equal(b, onlineImages(k)[needle.SizeMedium].Data) {
				t.Fatalf("%v on %s: HTTP %d", id, s.HTTPAddr(), code)
			}
		}
	}
	if _, err := ECEncodeCluster(ctx, rpc.Insecure(), c.DirAddr, vid, ECEncodeOptions{}, Output{W: &out}); err == nil {
		t.Fatal("second cluster encode succeeded")
	}
}

// TestECFourteenStores encodes a volume over 14 stores (one shard each),
// stops 4 of them, reads every photo with its old ETag, rebuilds the lost
// shards on the live stores, and stops 4 more.
func TestECFourteenStores(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 14 stores")
	}
	ctx := context.Background()
	c, cl, ids, vid := clusterWithPhotos(t, 14, 1, 12)
	reps, _, err := cl.Lookup(ctx, vid)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := c.Directory.MarkReadOnly(ctx, &directorypb.DirectoryMarkReadOnlyRequest{Vid: vid, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	c.Eventually("replica compacted", func() error {
		_, err := CompactOnline(ctx, rpc.Insecure(), reps[0].GRPCAddr, vid, Output{W: &out})
		return err
	})
	etags := map[string]string{}
	get := func(addr string, id needle.PhotoID, size needle.SizeCode) (int, string, []byte) {
		resp, err := http.Get("http://" + addr + needle.ImagePath(id, size, ""))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("ETag"), b
	}
	byGRPC := map[string]*testcluster.Store{}
	for _, s := range c.Stores {
		byGRPC[s.Srv.GRPCAddr().String()] = s
	}
	for id := range ids {
		if id.Vid == vid {
			for _, sz := range needle.PhotoSizes {
				_, etag, _ := get(byGRPC[reps[0].GRPCAddr].HTTPAddr(), id, sz)
				etags[needle.ImagePath(id, sz, "")] = etag
			}
		}
	}
	c.Eventually("volume sealed", func() error {
		resp, err := c.Directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
		if err != nil || resp.GetState() != storepb.VolumeState_VOLUME_STATE_SEALED {
			return fmt.Errorf("%v %v", resp.GetState(), err)
		}
		return nil
	})
	res, err := ECEncodeCluster(ctx, rpc.Insecure(), c.DirAddr, vid, ECEncodeOptions{LargeBlock: 16 << 10, SmallBlock: 1 << 10}, Output{W: &out})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(res.Shards) != 14 || res.SurvivesStores != 4 {
		t.Fatalf("placement %+v", res)
	}
	c.Eventually("EC on 14 stores", func() error {
		resp, err := c.Directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
		if err != nil || resp.GetState() != storepb.VolumeState_VOLUME_STATE_EC || len(resp.GetReplicas()) != 14 {
			return fmt.Errorf("%v, %d holders, %v", resp.GetState(), len(resp.GetReplicas()), err)
		}
		return nil
	})
	tryAll := func(live []*testcluster.Store) error {
		for id, k := range ids {
			if id.Vid != vid {
				continue
			}
			for i, im := range onlineImages(k) {
				s := live[(int(id.Key)+i)%len(live)]
				code, etag, b := get(s.HTTPAddr(), id, im.Size)
				if code != http.StatusOK || !bytes.Equal(b, im.Data) || etag != etags[needle.ImagePath(id, im.Size, "")] {
					return fmt.Errorf("%v size %v on %s: HTTP %d ETag %s", id, im.Size, s.HTTPAddr(), code, etag)
				}
			}
		}
		return nil
	}
	checkAll := func(what string, live []*testcluster.Store) {
		t.Helper()
		if err := tryAll(live); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		for id, k := range ids {
			if id.Vid != vid {
				continue
			}
			// A failed read drops the client's cached lookup (from before
			// the encode, when one store held the volume): the retry sees
			// every holder.
			f, err := cl.Read(ctx, id, needle.SizeThumb)
			if err != nil {
				f, err = cl.Read(ctx, id, needle.SizeThumb)
			}
			if err != nil || !bytes.Equal(f.Data, onlineImages(k)[needle.SizeThumb].Data) {
				t.Fatalf("%s: client read of %v: %v", what, id, err)
			}
		}
	}
	checkAll("encoded", c.Stores)
	// Kill the holders of 4 data shards.
	holderOf := func(shard int) *testcluster.Store {
		for id, sh := range res.Shards {
			if slices.Contains(sh, shard) {
				for _, s := range c.Stores {
					if s.HB.StoreID() == id {
						return s
					}
				}
			}
		}
		t.Fatalf("no holder of shard %d", shard)
		return nil
	}
	down := map[*testcluster.Store]bool{}
	for _, sh := range []int{0, 2, 5, 9} {
		s := holderOf(sh)
		s.Stop()
		down[s] = true
	}
	var live []*testcluster.Store
	for _, s := range c.Stores {
		if !down[s] {
			live = append(live, s)
		}
	}
	checkAll("4 stores down", live)
	c.Eventually("directory sees 4 stores dead", func() error {
		ls, err := c.Directory.ListStores(ctx, &directorypb.ListStoresRequest{})
		if err != nil {
			return err
		}
		dead := 0
		for _, s := range ls.GetStores() {
			if s.GetState() == directorypb.StoreState_STORE_STATE_DEAD {
				dead++
			}
		}
		if dead != 4 {
			return fmt.Errorf("%d dead", dead)
		}
		return nil
	})
	st, err := ECStatus(ctx, rpc.Insecure(), c.DirAddr, Output{W: &out})
	if !errors.Is(err, ErrCorrupt) || len(st) != 1 || st[0].Health != "degraded" || !slices.Equal(st[0].Missing, []int{0, 2, 5, 9}) || len(st[0].Down) != 4 {
		t.Fatalf("status with 4 stores down: %+v %v", st, err)
	}
	rb, err := ECRebuildCluster(ctx, rpc.Insecure(), c.DirAddr, vid, Output{W: &out})
	if err != nil || !slices.Equal(rb.Missing, []int{0, 2, 5, 9}) {
		t.Fatalf("cluster rebuild: %+v %v\n%s", rb, err, out.String())
	}
	if st, err := ECStatus(ctx, rpc.Insecure(), c.DirAddr, Output{W: io.Discard}); err != nil || len(st) != 1 || st[0].Health != "ok" {
		t.Fatalf("status after the rebuild: %+v %v", st, err)
	}
	// Four more stores down, each holding one shard: 10 shards are left.
	stopped := 0
	var still []*testcluster.Store
	for _, s := range live {
		e, err := s.Srv.Store().ECVolume(vid)
		if err != nil {
			t.Fatal(err)
		}
		if stopped < 4 && len(e.Status().Local) == 1 {
			s.Stop()
			stopped++
			continue
		}
		still = append(still, s)
	}
	if stopped != 4 {
		t.Fatalf("only %d single-shard stores to stop", stopped)
	}
	c.Eventually("status with 4 more stores down", func() error {
		st, err := ECStatus(ctx, rpc.Insecure(), c.DirAddr, Output{W: io.Discard})
		if !errors.Is(err, ErrCorrupt) || len(st) != 1 || st[0].Health != "degraded" || len(st[0].Missing) != 4 {
			return fmt.Errorf("%+v %v", st, err)
		}
		return nil
	})
	// A store re-learns where shards are at most a second after its last
	// look found one missing.
	c.Eventually("every photo with 4 more stores down", func() error { return tryAll(still) })
	checkAll("rebuilt, then 4 more stores down", still)
}

// clusterWithPhotos starts an in-process cluster of stores with the
// replication factor, writes n photos through a client and returns the
// cluster, the client (closed with the test), the photos with their index
// and the vid of one of them.
func clusterWithPhotos(t *testing.T, stores, replication, n int) (*testcluster.Cluster, *client.Client, map[needle.PhotoID]int, uint32) {
	t.Helper()
	c := testcluster.Start(t, testcluster.Options{Stores: stores, Replication: replication})
	cl, err := client.New(client.Options{Directory: c.DirAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	ids := map[needle.PhotoID]int{}
	for k := 0; k < n; k++ {
		ids[writeOnline(t, cl, k)] = k
	}
	var vid uint32
	for id := range ids {
		vid = id.Vid
	}
	return c, cl, ids, vid
}

// sealVolume marks vid read-only in the directory, compacts every replica
// until it is sealed, waits for the directory to see it sealed and
// returns its replicas.
func sealVolume(t *testing.T, c *testcluster.Cluster, cl *client.Client, vid uint32, out *bytes.Buffer) []client.Replica {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Directory.MarkReadOnly(ctx, &directorypb.DirectoryMarkReadOnlyRequest{Vid: vid, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	reps, _, err := cl.Lookup(ctx, vid)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reps {
		c.Eventually("replica sealed", func() error {
			_, err := CompactOnline(ctx, rpc.Insecure(), r.GRPCAddr, vid, Output{W: out})
			return err
		})
	}
	c.Eventually("volume sealed in the directory", func() error {
		resp, err := c.Directory.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
		if err != nil {
			return err
		}
		if resp.GetState() != storepb.VolumeState_VOLUME_STATE_SEALED {
			return fmt.Errorf("state %v", resp.GetState())
		}
		return nil
	})
	return reps
}
