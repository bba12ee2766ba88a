package tools

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// ECPlacementResult is what ECEncodeCluster reports.
type ECPlacementResult struct {
	Vid    uint32 `json:"vid"`
	Source string `json:"source"` // the store that encoded the volume
	// Shards maps each holder's store id to the shards it holds (possibly
	// none: a former replica that keeps only the index and journal).
	Shards map[string][]int `json:"shards"`
	// SurvivesStores and SurvivesRacks are how many stores, and racks, can
	// be lost whichever they are, with every needle still readable.
	SurvivesStores int `json:"survives_stores"`
	SurvivesRacks  int `json:"survives_racks"`
	Needles        int `json:"needles"`
}

// ECEncodeCluster erasure-codes the read-only or sealed volume vid of the
// cluster whose directory is at dirAddr, through the directory's EcEncode
// RPC: the directory (its leader) seals the replicas, has one of them
// encode the volume, spreads the 14 shards over the live stores on
// distinct racks as far as labels allow, verifies them, records the volume
// as EC and replaces the plain replicas (see directory.Directory.EncodeEC,
// the one implementation of the workflow, which the automatic policy runs
// too). It prints each step as the directory reports it. With fewer than
// 14 stores some hold several shards; the report says how many store and
// rack losses the placement survives. A writable volume is refused: mark
// it read-only first. While the shards move, the directory refuses delete
// tokens for the volume's photos.
func ECEncodeCluster(ctx context.Context, creds *rpc.Credentials, dirAddr string, vid uint32, opts ECEncodeOptions, out Output) (ECPlacementResult, error) {
	res := ECPlacementResult{Vid: vid, Shards: map[string][]int{}}
	cl, err := client.New(client.Options{Directory: dirAddr, Credentials: creds})
	if err != nil {
		return res, err
	}
	defer cl.Close()
	req := &directorypb.DirectoryEcEncodeRequest{Vid: vid,
		LargeBlock: uint64(max(opts.LargeBlock, 0)), SmallBlock: uint64(max(opts.SmallBlock, 0))}
	var placed *directorypb.EcPlacement
	// A node that does not lead answers a stream before it sends anything:
	// the client then knows the leader, and the call is made again. (A
	// job already started elsewhere answers ABORTED; one cut short
	// resumes.)
	for attempt := 1; placed == nil; attempt++ {
		got := 0
		stream, err := cl.Directory().EcEncode(ctx, req)
		for err == nil && placed == nil {
			var m *directorypb.DirectoryEcEncodeResponse
			if m, err = stream.Recv(); err == nil {
				got++
				if placed = m.GetPlacement(); placed == nil {
					out.printf("%s\n", m.GetMessage())
				}
			}
		}
		switch {
		case placed != nil:
		case err == io.EOF:
			return res, fmt.Errorf("EC encode volume %d: the directory ended the job without a placement", vid)
		case got == 0 && attempt < ecEncodeAttempts && client.DirectoryElsewhere(err):
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
		default:
			return res, fmt.Errorf("EC encode volume %d: %w", vid, err)
		}
	}
	res.Source = placed.GetSourceStoreId()
	res.Needles = int(placed.GetNeedles())
	res.SurvivesStores = int(placed.GetSurvivesStores())
	res.SurvivesRacks = int(placed.GetSurvivesRacks())
	racks := map[string]bool{}
	stores := 0
	for _, h := range placed.GetHolders() {
		sh := []int{}
		for _, s := range h.GetShards() {
			sh = append(sh, int(s))
		}
		res.Shards[h.GetStoreId()] = sh
		if len(sh) > 0 {
			stores++
			racks[h.GetRack()] = true
		}
	}
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("volume %d: encoded on %s, %d needles; shards on %d stores in %d racks; survives the loss of any %d store(s), any %d rack(s)\n",
		vid, res.Source, res.Needles, stores, len(racks), res.SurvivesStores, res.SurvivesRacks)
	return res, nil
}

// ecEncodeAttempts bounds the calls ECEncodeCluster makes to find the
// directory's leader.
const ecEncodeAttempts = 5

// ECRebuildClusterResult is what ECRebuildCluster reports.
type ECRebuildClusterResult struct {
	Vid uint32 `json:"vid"`
	// Missing lists the shards no live holder had; Rebuilt maps the store
	// ids that regenerated them to their shards.
	Missing []int            `json:"missing"`
	Rebuilt map[string][]int `json:"rebuilt"`
	// Synced maps each live holder to what the sync of its index and
	// journal did (EcIndexSync); SyncFailed the holders whose sync
	// failed, with the reason. JournalsAgree is set when, at the end,
	// every live holder holds the same deletes.
	Synced        map[string]ECHolderSync `json:"synced"`
	SyncFailed    map[string]string       `json:"sync_failed,omitempty"`
	JournalsAgree bool                    `json:"journals_agree"`
}

// ECRebuildCluster repairs EC volume vid: first every live holder syncs
// its index and journal with the others (see syncECHolders), then the
// shards that no live store holds (their holders are down or lost them)
// are regenerated on live stores: ones
// holding no shard of the volume first (on racks the volume does not use
// yet, as far as labels allow), then the holders with the fewest shards. A
// store that did not hold the volume first copies its index and journal
// (EcShardMount), then rebuilds (EcRebuild) from 10 shards read from its
// peers. More than 4 shards missing returns ErrCorrupt.
func ECRebuildCluster(ctx context.Context, creds *rpc.Credentials, dirAddr string, vid uint32, out Output) (ECRebuildClusterResult, error) {
	res := ECRebuildClusterResult{Vid: vid, Rebuilt: map[string][]int{}, Synced: map[string]ECHolderSync{}, SyncFailed: map[string]string{}}
	cl, err := client.New(client.Options{Directory: dirAddr, Credentials: creds})
	if err != nil {
		return res, err
	}
	defer cl.Close()
	dir := cl.Directory()
	look, err := dir.Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
	if err != nil {
		return res, fmt.Errorf("look volume %d up: %w", vid, err)
	}
	ls, err := dir.ListStores(ctx, &directorypb.ListStoresRequest{})
	if err != nil {
		return res, err
	}
	alive := aliveStores(ls)
	held := map[int]bool{}
	count := map[string]int{}
	usedRacks := map[string]bool{}
	var source string
	answered, _ := liveHolders(ctx, cl, vid, look, alive)
	syncECHolders(ctx, cl, vid, answered, &res, out)
	answered, _ = liveHolders(ctx, cl, vid, look, alive)
	for _, h := range answered {
		if h.vol.GetState() != storepb.VolumeState_VOLUME_STATE_EC {
			continue
		}
		s := h.info
		count[s.GetId()] = len(h.vol.GetEcShardIds())
		usedRacks[s.GetRack()] = true
		if source == "" {
			source = s.GetGrpcAddr()
		}
		for _, i := range h.vol.GetEcShardIds() {
			held[int(i)] = true
		}
	}
	if source == "" {
		return res, fmt.Errorf("%w: no live store holds EC volume %d", ErrCorrupt, vid)
	}
	for i := 0; i < volume.ECShards; i++ {
		if !held[i] {
			res.Missing = append(res.Missing, i)
		}
	}
	if len(res.Missing) == 0 {
		res.JournalsAgree = journalsAgree(ctx, cl, vid, look, alive)
		if err := out.json(res); err != nil {
			return res, err
		}
		out.printf("volume %d: every shard is held by a live store; nothing to rebuild\n", vid)
		return res, syncFailure(vid, &res)
	}
	if len(res.Missing) > volume.ECParityShards {
		return res, fmt.Errorf("%w: volume %d: shards %v are on no live store, at most %d can be rebuilt", ErrCorrupt, vid, res.Missing, volume.ECParityShards)
	}
	// Targets: stores without the volume (new racks first), then holders
	// with the fewest shards.
	var targets []*directorypb.StoreInfo
	for _, s := range ls.GetStores() {
		if _, holds := count[s.GetId()]; alive[s.GetId()] != nil && !holds {
			targets = append(targets, s)
		}
	}
	slices.SortStableFunc(targets, func(a, b *directorypb.StoreInfo) int {
		ua, ub := usedRacks[a.GetRack()], usedRacks[b.GetRack()]
		switch {
		case ua == ub:
			return 0
		case !ua:
			return -1
		}
		return 1
	})
	var holders []*directorypb.StoreInfo
	for id := range count {
		holders = append(holders, alive[id])
	}
	slices.SortFunc(holders, func(a, b *directorypb.StoreInfo) int {
		return cmp.Or(cmp.Compare(count[a.GetId()], count[b.GetId()]), cmp.Compare(a.GetId(), b.GetId()))
	})
	targets = append(targets, holders...)
	assign := map[*directorypb.StoreInfo][]uint32{}
	var order []*directorypb.StoreInfo
	for k, shard := range res.Missing {
		t := targets[k%len(targets)]
		if _, ok := assign[t]; !ok {
			order = append(order, t)
		}
		assign[t] = append(assign[t], uint32(shard))
	}
	for _, t := range order {
		sc, err := cl.Store(t.GetGrpcAddr())
		if err != nil {
			return res, err
		}
		if _, holds := count[t.GetId()]; !holds {
			if _, err := sc.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: vid, SourceGrpcAddr: source}); err != nil {
				return res, fmt.Errorf("copy the index of volume %d to %s: %w", vid, t.GetId(), err)
			}
		}
		if _, err := sc.EcRebuild(ctx, &storepb.EcRebuildRequest{Vid: vid, Shards: assign[t]}); err != nil {
			return res, fmt.Errorf("rebuild shards %v of volume %d on %s: %w", assign[t], vid, t.GetId(), err)
		}
		for _, sh := range assign[t] {
			res.Rebuilt[t.GetId()] = append(res.Rebuilt[t.GetId()], int(sh))
		}
		out.printf("volume %d: rebuilt shards %v on store %s (rack %q)\n", vid, assign[t], t.GetId(), t.GetRack())
	}
	res.JournalsAgree = journalsAgree(ctx, cl, vid, look, alive)
	if err := out.json(res); err != nil {
		return res, err
	}
	return res, syncFailure(vid, &res)
}
