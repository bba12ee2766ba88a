package directory

import (
	"github.com/haybale/haybale/internal/placement"
)

// placeStore is a candidate holder of an EC volume's shards.
type placeStore struct {
	id, rack string
	replica  bool // holds a replica of the volume
}

// placeShards orders the candidates so that consecutive ones are on
// distinct racks as far as labels allow (the source first of all, then
// replica holders, first within their rack), takes at most 14, and gives
// shard i to store i mod n. A store without a rack label counts as a rack
// of its own only by its empty label: stores sharing a label share a rack.
func placeShards(stores []placeStore, source string) ([]placeStore, [][]uint32) {
	order := placement.RackOrder(stores, source, ecShards, func(s placeStore) (string, string, bool) { return s.id, s.rack, s.replica })
	if len(order) == 0 {
		return nil, nil
	}
	shards := make([][]uint32, len(order))
	for i := uint32(0); i < ecShards; i++ {
		k := int(i) % len(order)
		shards[k] = append(shards[k], i)
	}
	return order, shards
}

// survivable returns how many of the groups (stores or racks) holding
// counts shards can be lost, whichever they are, with at least 10 shards
// left.
func survivable(counts []int) int { return survivableLosses(counts, ecParityShards) }
