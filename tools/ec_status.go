package tools

import (
	"context"
	"fmt"
	"slices"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// ECVolumeHealth is one EC volume as ECStatus finds it.
type ECVolumeHealth struct {
	Vid    uint32 `json:"vid"`
	Images uint64 `json:"images"`
	// Holders maps each live holder's store id to the shards it holds.
	Holders map[string][]int `json:"holders"`
	// Down lists the holders the directory reports dead or that did not
	// answer.
	Down []string `json:"down,omitempty"`
	// Missing lists the shards no live holder serves.
	Missing []int `json:"missing"`
	// Health is "ok", "degraded" (1 to 4 shards missing: rebuild) or
	// "unrecoverable" (more than 4).
	Health string `json:"health"`
}

// ECStatus shows every EC volume of the cluster whose directory is at
// dirAddr: which live store holds which shards, the holders that are down,
// and the shards missing. It returns ErrCorrupt when a shard is missing.
func ECStatus(ctx context.Context, creds *rpc.Credentials, dirAddr string, out Output) ([]ECVolumeHealth, error) {
	cl, err := client.New(client.Options{Directory: dirAddr, Credentials: creds})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	dir := cl.Directory()
	ls, err := dir.ListStores(ctx, &directorypb.ListStoresRequest{})
	if err != nil {
		return nil, err
	}
	stores := map[string]*directorypb.StoreInfo{}
	for _, s := range ls.GetStores() {
		stores[s.GetId()] = s
	}
	lv, err := dir.ListVolumes(ctx, &directorypb.ListVolumesRequest{})
	if err != nil {
		return nil, err
	}
	var vols []ECVolumeHealth
	damaged := 0
	for _, v := range lv.GetVolumes() {
		if v.GetState() != storepb.VolumeState_VOLUME_STATE_EC {
			continue
		}
		h := ECVolumeHealth{Vid: v.GetVid(), Images: v.GetNeedleCount(), Holders: map[string][]int{}}
		held := map[int]bool{}
		for _, id := range v.GetReplicaStoreIds() {
			s := stores[id]
			if s == nil || s.GetState() != directorypb.StoreState_STORE_STATE_ALIVE {
				h.Down = append(h.Down, id)
				continue
			}
			sc, err := cl.Store(s.GetGrpcAddr())
			if err != nil {
				h.Down = append(h.Down, id)
				continue
			}
			st, err := sc.VolumeStatus(ctx, &storepb.VolumeStatusRequest{Vid: v.GetVid()})
			if err != nil || len(st.GetVolumes()) != 1 {
				h.Down = append(h.Down, id)
				continue
			}
			var shards []int
			for _, i := range st.GetVolumes()[0].GetEcShardIds() {
				shards = append(shards, int(i))
				held[int(i)] = true
			}
			h.Holders[id] = shards
		}
		for i := 0; i < volume.ECShards; i++ {
			if !held[i] {
				h.Missing = append(h.Missing, i)
			}
		}
		switch {
		case len(h.Missing) == 0:
			h.Health = "ok"
		case len(h.Missing) <= volume.ECParityShards:
			h.Health = "degraded"
			damaged++
		default:
			h.Health = "unrecoverable"
			damaged++
		}
		vols = append(vols, h)
		out.printf("volume %d: %s, %d images, %d holders, missing shards %v\n", h.Vid, h.Health, h.Images, len(h.Holders), h.Missing)
		ids := make([]string, 0, len(h.Holders))
		for id := range h.Holders {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			out.printf("  %s (rack %q): shards %v\n", id, stores[id].GetRack(), h.Holders[id])
		}
		for _, id := range h.Down {
			out.printf("  %s: DOWN\n", id)
		}
	}
	if err := out.json(vols); err != nil {
		return vols, err
	}
	if len(vols) == 0 {
		out.printf("no EC volume\n")
	}
	if damaged > 0 {
		return vols, fmt.Errorf("%w: %d EC volume(s) miss shards; run haybale ec rebuild --directory ... --vid N", ErrCorrupt, damaged)
	}
	return vols, nil
}
