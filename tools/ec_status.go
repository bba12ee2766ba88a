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
	// Journals maps each live holder serving the volume to its deletion
	// journal: the number of deletes and the digest of their set.
	// JournalsDiffer is set when they do not all hold the same deletes
	// (a holder missed some; the stores' periodic sync, or haybale ec
	// rebuild, merges them).
	Journals       map[string]ECJournalState `json:"journals"`
	JournalsDiffer bool                      `json:"journals_differ"`
	// Failed maps the holders that cannot serve the volume (its index
	// lost or damaged, for example) to the reason.
	Failed map[string]string `json:"failed,omitempty"`
	// Health is "ok", "degraded" (1 to 4 shards missing: rebuild) or
	// "unrecoverable" (more than 4).
	Health string `json:"health"`
}

// ECJournalState is one holder's deletion journal of an EC volume.
type ECJournalState struct {
	Deletes uint64 `json:"deletes"`
	Digest  string `json:"digest"` // hex digest of the set of deletes
}

// ECStatus shows every EC volume of the cluster whose directory is at
// dirAddr: which live store holds which shards, the holders that are down
// or failed, the shards missing, and each holder's journal (with a warning
// when they differ). It returns ErrCorrupt when a shard is missing.
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
		h := ECVolumeHealth{Vid: v.GetVid(), Images: v.GetNeedleCount(), Holders: map[string][]int{}, Journals: map[string]ECJournalState{}}
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
			info := st.GetVolumes()[0]
			if info.GetState() != storepb.VolumeState_VOLUME_STATE_EC {
				if h.Failed == nil {
					h.Failed = map[string]string{}
				}
				h.Failed[id] = fmt.Sprintf("%v: %s", info.GetState(), info.GetReadOnlyReason())
				continue
			}
			h.Journals[id] = ECJournalState{Deletes: info.GetEcDeletedCount(), Digest: fmt.Sprintf("%016x", info.GetEcJournalDigest())}
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
		var first *ECJournalState
		for _, j := range h.Journals {
			if first == nil {
				first = &j
			} else if j != *first {
				h.JournalsDiffer = true
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
			j := h.Journals[id]
			out.printf("  %s (rack %q): shards %v, journal %d deletes (digest %s)\n", id, stores[id].GetRack(), h.Holders[id], j.Deletes, j.Digest)
		}
		if h.JournalsDiffer {
			out.printf("  JOURNALS DIFFER: some holders lack deletes others journaled; the stores merge them at their next sync, or run haybale ec rebuild --directory ... --vid %d\n", h.Vid)
		}
		failedIDs := make([]string, 0, len(h.Failed))
		for id := range h.Failed {
			failedIDs = append(failedIDs, id)
		}
		slices.Sort(failedIDs)
		for _, id := range failedIDs {
			out.printf("  %s: FAILED (%s); haybale ec rebuild --directory ... --vid %d restores its index\n", id, h.Failed[id], h.Vid)
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
