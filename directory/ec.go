package directory

import (
	"cmp"
	"slices"
)

// The Reed-Solomon layout of an EC volume (DESIGN.md, "Erasure coding"):
// 10 data and 4 parity shards, any 10 of which rebuild the volume.
const (
	ecDataShards   = 10
	ecParityShards = 4
	ecShards       = ecDataShards + ecParityShards
)

// ecShardIDs is the shard list of a store's report: ascending, without
// duplicates or ids outside 0..13 (nil when empty).
func ecShardIDs(ids []uint32) []uint32 {
	var out []uint32
	for _, id := range ids {
		if id < ecShards {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ECHolder is one store holding an EC volume: its shards (possibly none,
// a store keeping only the index and deletion journal) and its liveness.
type ECHolder struct {
	StoreID string   `json:"store_id"`
	State   string   `json:"state"` // "alive", "dead" or "unknown"
	Rack    string   `json:"rack,omitempty"`
	Shards  []uint32 `json:"shards"`
}

// ECShardStatus is where the shards of an EC volume are, as this node
// sees them.
type ECShardStatus struct {
	Holders []ECHolder `json:"holders"`
	// Missing lists the shards no holder serves: held by no store, or
	// only by stores this node knows to be dead.
	Missing []uint32 `json:"missing"`
	// Health is "ok" (every shard served), "degraded" (1 to 4 missing:
	// every needle reads, `haybale ec rebuild` restores them) or
	// "unrecoverable" (more than 4 missing).
	Health string `json:"health"`
	// SurvivesShards is how many more shards can be lost with every
	// needle still readable; SurvivesStores, how many more live holders,
	// whichever they are.
	SurvivesShards int `json:"survives_shards"`
	SurvivesStores int `json:"survives_stores"`
}

// ecStatus returns the shard placement of EC volume v. A holder counts as
// serving its shards unless this node knows it dead: a follower, which
// hears no heartbeats, goes by the committed reports.
func (d *Directory) ecStatus(sn *snapshot, v VolumeRecord) *ECShardStatus {
	out := &ECShardStatus{Holders: []ECHolder{}, Missing: []uint32{}}
	served := map[uint32]bool{}
	var counts []int
	for _, r := range v.Replicas {
		st := d.storeState(sn, r.StoreID)
		rs := sn.replicaState(r)
		h := ECHolder{StoreID: r.StoreID, State: st.String(), Rack: sn.stores[r.StoreID].Rack, Shards: slices.Clone(rs.EcShards)}
		if h.Shards == nil {
			h.Shards = []uint32{}
		}
		out.Holders = append(out.Holders, h)
		if st == StoreDead || rs.State != StateEC {
			continue
		}
		n := 0
		for _, id := range rs.EcShards {
			if !served[id] {
				served[id] = true
				n++
			}
		}
		counts = append(counts, n)
	}
	slices.SortStableFunc(out.Holders, func(a, b ECHolder) int { return cmp.Compare(a.StoreID, b.StoreID) })
	for id := uint32(0); id < ecShards; id++ {
		if !served[id] {
			out.Missing = append(out.Missing, id)
		}
	}
	switch m := len(out.Missing); {
	case m == 0:
		out.Health = "ok"
	case m <= ecParityShards:
		out.Health = "degraded"
	default:
		out.Health = "unrecoverable"
	}
	if spare := ecParityShards - len(out.Missing); spare > 0 {
		out.SurvivesShards = spare
		out.SurvivesStores = survivableLosses(counts, spare)
	}
	return out
}

// survivableLosses returns how many of the groups holding counts shards
// can be lost, whichever they are, losing at most spare shards: the
// largest groups are lost first.
func survivableLosses(counts []int, spare int) int {
	counts = slices.Clone(counts)
	slices.SortFunc(counts, func(a, b int) int { return cmp.Compare(b, a) })
	lost, k := 0, 0
	for _, c := range counts {
		if lost+c > spare {
			break
		}
		lost += c
		k++
	}
	return k
}
