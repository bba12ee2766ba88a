package directory

import (
	"cmp"
	"slices"
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
	for len(order) < min(len(stores), ecShards) {
		for _, r := range racks {
			if len(byRack[r]) > 0 && len(order) < ecShards {
				order = append(order, byRack[r][0])
				byRack[r] = byRack[r][1:]
			}
		}
	}
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
