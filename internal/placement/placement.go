// Package placement owns the rule by which haybale spreads copies of a
// volume (EC shards, decoded replicas) over stores: consecutive picks on
// distinct racks as far as the stores' rack labels allow, starting from
// the store that already holds the data. The directory places EC shards
// by it and the operator tools place decoded replicas by it.
package placement

import (
	"cmp"
	"slices"
)

// RackOrder returns up to limit of stores (all of them when limit is not
// positive), ordered so that consecutive ones are on distinct racks as far
// as labels allow: the store whose ID is source first of all, then the
// stores that hold a replica of the volume, first within their rack, then
// the others. describe gives a store's ID, rack label and whether it holds
// a replica. Stores without a label share the rack of the empty label.
// Stores keep their given order within the same rank of one rack.
func RackOrder[S any](stores []S, source string, limit int, describe func(S) (id, rack string, replica bool)) []S {
	if limit <= 0 || limit > len(stores) {
		limit = len(stores)
	}
	rank := func(s S) int {
		id, _, replica := describe(s)
		switch {
		case id == source:
			return 0
		case replica:
			return 1
		}
		return 2
	}
	byRack := map[string][]S{}
	var racks []string
	for _, s := range stores {
		_, rack, _ := describe(s)
		if _, ok := byRack[rack]; !ok {
			racks = append(racks, rack)
		}
		byRack[rack] = append(byRack[rack], s)
	}
	for _, r := range racks {
		slices.SortStableFunc(byRack[r], func(a, b S) int { return cmp.Compare(rank(a), rank(b)) })
	}
	// The source's rack first, then racks with replicas.
	slices.SortStableFunc(racks, func(a, b string) int {
		return cmp.Compare(rank(byRack[a][0]), rank(byRack[b][0]))
	})
	order := make([]S, 0, limit)
	for len(order) < limit {
		for _, r := range racks {
			if len(byRack[r]) > 0 && len(order) < limit {
				order = append(order, byRack[r][0])
				byRack[r] = byRack[r][1:]
			}
		}
	}
	return order
}
