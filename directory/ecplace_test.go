package directory

import (
	"fmt"
	"slices"
	"testing"
)

func TestPlaceShards(t *testing.T) {
	var stores []placeStore
	for i := 0; i < 20; i++ {
		stores = append(stores, placeStore{id: fmt.Sprint("s", i), rack: fmt.Sprint("r", i%4), replica: i == 7 || i == 9})
	}
	order, shards := placeShards(stores, "s9")
	if len(order) != ecShards || order[0].id != "s9" {
		t.Fatalf("order %v", order)
	}
	racks := map[string]int{}
	for i, s := range order {
		if len(shards[i]) != 1 {
			t.Fatalf("store %s holds %v", s.id, shards[i])
		}
		racks[s.rack]++
	}
	// 14 stores over 4 racks: 4, 4, 3, 3; the replica s7 is among them.
	if len(racks) != 4 || !slices.ContainsFunc(order, func(s placeStore) bool { return s.id == "s7" }) {
		t.Fatalf("racks %v, order %v", racks, order)
	}
	if got := survivable([]int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}); got != 4 {
		t.Fatalf("14 stores survive %d losses", got)
	}
	if got := survivable([]int{5, 5, 4}); got != 0 {
		t.Fatalf("5/5/4 survives %d losses", got)
	}
	if got := survivable([]int{2, 2, 2, 2, 2, 2, 2}); got != 2 {
		t.Fatalf("7 stores of 2 survive %d losses", got)
	}
	order, shards = placeShards(stores[:3], "s1")
	if order[0].id != "s1" || len(shards[0]) != 5 || len(shards[2]) != 4 {
		t.Fatalf("3 stores: %v %v", order, shards)
	}
	if order, shards := placeShards(nil, "s1"); order != nil || shards != nil {
		t.Fatalf("no store: %v %v", order, shards)
	}
}
