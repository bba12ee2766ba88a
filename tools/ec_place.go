package tools

import (
	"cmp"
	"context"
	"fmt"
	"slices"

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

// placeStore is a candidate holder.
type placeStore struct {
	id, addr, rack string
	replica        bool
}

// placeShards orders the candidates so that consecutive ones are on
// distinct racks as far as labels allow (replica holders, and the source
// first of all, first within their rack), takes at most 14, and gives
// shard i to store i mod n.
func placeShards(stores []placeStore, source string) ([]placeStore, [][]int) {
	byRack := map[string][]placeStore{}
	var racks []string
	for _, s := range stores {
		if _, ok := byRack[s.rack]; !ok {
			racks = append(racks, s.rack)
		}
		byRack[s.rack] = append(byRack[s.rack], s)
	}
	rank := func(s placeStore) int {
		switch {
		case s.id == source:
			return 0
		case s.replica:
			return 1
		}
		return 2
	}
	for _, r := range racks {
		slices.SortStableFunc(byRack[r], func(a, b placeStore) int { return cmp.Compare(rank(a), rank(b)) })
	}
	// The source's rack first.
	slices.SortStableFunc(racks, func(a, b string) int {
		return cmp.Compare(rank(byRack[a][0]), rank(byRack[b][0]))
	})
	var order []placeStore
	for len(order) < min(len(stores), volume.ECShards) {
		for _, r := range racks {
			if len(byRack[r]) > 0 && len(order) < volume.ECShards {
				order = append(order, byRack[r][0])
				byRack[r] = byRack[r][1:]
			}
		}
	}
	shards := make([][]int, len(order))
	for i := 0; i < volume.ECShards; i++ {
		shards[i%len(order)] = append(shards[i%len(order)], i)
	}
	return order, shards
}

// survivable returns how many of the groups (stores or racks) holding
// counts shards can be lost, whichever they are, keeping at least 10.
func survivable(counts []int) int {
	slices.SortFunc(counts, func(a, b int) int { return cmp.Compare(b, a) })
	lost, k := 0, 0
	for _, c := range counts {
		if lost+c > volume.ECParityShards {
			break
		}
		lost += c
		k++
	}
	return k
}

// ECEncodeCluster erasure-codes the sealed volume vid of the cluster whose
// directory is at dirAddr and spreads its 14 shards over the live stores,
// on distinct racks as far as labels allow: one replica holder encodes it
// in place (EcEncode), the chosen stores copy their shards from it
// (EcShardMount, which replaces the plain replicas they hold), replicas not
// chosen keep the index and journal only, and the encoder then gives away
// the shards it does not keep (EcShardDelete). The directory switches the
// volume to EC once every holder reports it so. With fewer than 14 stores
// some hold several shards; the report says how many store and rack losses
// the placement survives. A delete made while it runs reaches the volume's
// former replicas (the source's EC journal, or a plain replica, whose
// tombstones its mount journals); at the end every holder syncs its
// journal with the others (EcIndexSync), and the stores' periodic syncs
// spread any delete made later, so no holder keeps serving a deleted
// photo.
func ECEncodeCluster(ctx context.Context, creds *rpc.Credentials, dirAddr string, vid uint32, opts ECEncodeOptions, out Output) (ECPlacementResult, error) {
	res := ECPlacementResult{Vid: vid, Shards: map[string][]int{}}
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
	if st := look.GetState(); st != storepb.VolumeState_VOLUME_STATE_SEALED {
		return res, fmt.Errorf("volume %d is %v: only a sealed volume (read-only and compacted on every replica) is encoded", vid, st)
	}
	if len(look.GetReplicas()) == 0 {
		return res, fmt.Errorf("volume %d has no replica", vid)
	}
	replicas := map[string]bool{}
	for _, r := range look.GetReplicas() {
		replicas[r.GetStoreId()] = true
	}
	srcRep := look.GetReplicas()[0]
	res.Source = srcRep.GetStoreId()
	ls, err := dir.ListStores(ctx, &directorypb.ListStoresRequest{})
	if err != nil {
		return res, err
	}
	var cands []placeStore
	for _, s := range ls.GetStores() {
		if s.GetState() == directorypb.StoreState_STORE_STATE_ALIVE || s.GetId() == res.Source {
			cands = append(cands, placeStore{id: s.GetId(), addr: s.GetGrpcAddr(), rack: s.GetRack(), replica: replicas[s.GetId()]})
		}
	}
	src, err := cl.Store(srcRep.GetGrpcAddr())
	if err != nil {
		return res, err
	}
	enc, err := src.EcEncode(ctx, &storepb.EcEncodeRequest{Vid: vid, LargeBlock: uint64(max(opts.LargeBlock, 0)), SmallBlock: uint64(max(opts.SmallBlock, 0))})
	if err != nil {
		return res, fmt.Errorf("EC encode volume %d on %s: %w", vid, res.Source, err)
	}
	res.Needles = int(enc.GetNeedles())
	order, shards := placeShards(cands, res.Source)
	keep := map[int]bool{}
	chosen := map[string]bool{}
	for i, s := range order {
		chosen[s.id] = true
		res.Shards[s.id] = shards[i]
		if s.id == res.Source {
			for _, sh := range shards[i] {
				keep[sh] = true
			}
		}
	}
	// Replicas left out keep the index and journal: their plain copies go.
	for _, s := range cands {
		if s.replica && !chosen[s.id] && s.id != res.Source {
			order = append(order, s)
			shards = append(shards, nil)
			res.Shards[s.id] = []int{}
		}
	}
	for i, s := range order {
		if s.id == res.Source {
			continue
		}
		sc, err := cl.Store(s.addr)
		if err != nil {
			return res, err
		}
		ids := make([]uint32, len(shards[i]))
		for k, sh := range shards[i] {
			ids[k] = uint32(sh)
		}
		if _, err := sc.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: vid, Shards: ids, SourceGrpcAddr: srcRep.GetGrpcAddr()}); err != nil {
			return res, fmt.Errorf("place shards %v of volume %d on %s: %w (the encoder %s still holds every shard)", shards[i], vid, s.id, err, res.Source)
		}
		out.printf("volume %d: shards %v on store %s (rack %q)\n", vid, shards[i], s.id, s.rack)
	}
	var drop []uint32
	for i := 0; i < volume.ECShards; i++ {
		if !keep[i] {
			drop = append(drop, uint32(i))
		}
	}
	if len(drop) > 0 {
		if _, err := src.EcShardDelete(ctx, &storepb.EcShardDeleteRequest{Vid: vid, Shards: drop}); err != nil {
			return res, fmt.Errorf("drop the placed shards from %s: %w", res.Source, err)
		}
	}
	// Every holder merges the deletes the others journaled meanwhile.
	syncPlaced(ctx, cl, vid, order, out)
	var perStore []int
	perRack := map[string]int{}
	for i, s := range order {
		perStore = append(perStore, len(shards[i]))
		perRack[s.rack] += len(shards[i])
	}
	res.SurvivesStores = survivable(perStore)
	var rc []int
	for _, n := range perRack {
		rc = append(rc, n)
	}
	res.SurvivesRacks = survivable(rc)
	if err := out.json(res); err != nil {
		return res, err
	}
	out.printf("volume %d: encoded on %s, %d needles; shards on %d stores in %d racks; survives the loss of any %d store(s), any %d rack(s)\n",
		vid, res.Source, res.Needles, len(perStore), len(perRack), res.SurvivesStores, res.SurvivesRacks)
	return res, nil
}

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
