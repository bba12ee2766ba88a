package placement

import (
	"slices"
	"testing"
)

type store struct {
	id, rack string
	replica  bool
}

func describe(s store) (string, string, bool) { return s.id, s.rack, s.replica }

func ids(ss []store) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.id)
	}
	return out
}

func TestRackOrder(t *testing.T) {
	stores := []store{
		{"c1", "c", false},
		{"b1", "b", false},
		{"b2", "b", true},
		{"a1", "a", false},
		{"a2", "a", false},
		{"src", "a", false},
		{"n1", "", false},
	}
	// The source's rack first, then the rack with a replica (its holder
	// first), then the others in the order given; one store per rack per
	// turn.
	want := []string{"src", "b2", "c1", "n1", "a1", "b1", "a2"}
	if got := ids(RackOrder(stores, "src", 0, describe)); !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	if got := ids(RackOrder(stores, "src", 3, describe)); !slices.Equal(got, want[:3]) {
		t.Errorf("limit 3: %v, want %v", got, want[:3])
	}
	if got := RackOrder([]store(nil), "src", 14, describe); len(got) != 0 {
		t.Errorf("no stores: %v", got)
	}
	// Every store appears once, whatever the limit above their number.
	if got := ids(RackOrder(stores, "none", 100, describe)); len(got) != len(stores) {
		t.Errorf("limit over the count: %v", got)
	}
}
