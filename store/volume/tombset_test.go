package volume

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestTombSetModel checks the tombstone set against a map through random
// puts (new and replacing, in random key order, across many merges),
// lookups and ordered walks.
func TestTombSetModel(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	ts := newTombSet()
	model := map[[2]uint64]excEntry{}
	check := func(step int) {
		t.Helper()
		var units uint64
		for _, e := range model {
			units += uint64(e.length)
		}
		if ts.len() != len(model) || ts.units != units {
			t.Fatalf("step %d: %d tombstones, %d units; model %d, %d", step, ts.len(), ts.units, len(model), units)
		}
		var got []excEntry
		ts.ascend(func(e excEntry) bool { got = append(got, e); return true })
		want := slices.SortedFunc(maps.Values(model), tombCmp)
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: ascend gives %d entries, not the model's %d in order", step, len(got), len(want))
		}
		if len(got) > 3 {
			n := 0
			ts.ascend(func(excEntry) bool { n++; return n < 3 })
			if n != 3 {
				t.Fatalf("step %d: ascend did not stop when asked", step)
			}
		}
	}
	for step := 0; step < 20000; step++ {
		key := r.Uint64N(5000)
		size := r.Uint32N(5)
		if r.IntN(4) == 0 {
			size = allSizes
		}
		switch r.IntN(3) {
		case 0, 1:
			e := excEntry{key: key, size: size, off: r.Uint32(), length: 1 + r.Uint32N(9)}
			ts.put(e)
			model[[2]uint64{key, uint64(size)}] = e
		default:
			_, want := model[[2]uint64{key, uint64(size)}]
			if ts.has(key, size) != want {
				t.Fatalf("step %d: has(%d, %d) = %v, want %v", step, key, size, !want, want)
			}
		}
		if step%2500 == 0 {
			check(step)
		}
	}
	check(-1)
	if len(ts.sorted) == 0 {
		t.Fatal("no merge happened")
	}
}
