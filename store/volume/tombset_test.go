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

// TestTombSetWide checks tombstones a packed record cannot hold (size
// codes of 255 and more, needles longer than 255 units) against a map,
// mixed with packable ones for the same keys, one replacing the other both
// ways, across merges.
func TestTombSetWide(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
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
		if want := slices.SortedFunc(maps.Values(model), tombCmp); !slices.Equal(got, want) {
			t.Fatalf("step %d: ascend differs from the model", step)
		}
		for k, e := range model {
			if !ts.has(k[0], uint32(k[1])) {
				t.Fatalf("step %d: has(%d, %d) false", step, e.key, e.size)
			}
		}
	}
	sizes := []uint32{0, 3, 11, 254, 255, 256, 1 << 20, allSizes - 1, allSizes}
	for step := range 12000 {
		e := excEntry{key: r.Uint64N(3000), size: sizes[r.IntN(len(sizes))], off: r.Uint32(), length: 7}
		if r.IntN(3) == 0 {
			e.length = 250 + r.Uint32N(10) // some above 255
		}
		ts.put(e)
		model[[2]uint64{e.key, uint64(e.size)}] = e
		if step%1500 == 0 {
			check(step)
		}
	}
	check(-1)
	if ts.nsorted() == 0 || ts.wide == nil || ts.wide.Len() == 0 {
		t.Fatalf("%d packed, wide %v: the test did not reach both forms", ts.nsorted(), ts.wide)
	}
	n := 0
	ts.ascend(func(excEntry) bool { n++; return n < 10 })
	if n != 10 {
		t.Fatalf("ascend did not stop when asked: %d calls", n)
	}
	ts.release()
	if ts.len() != 0 || ts.mem != nil {
		t.Fatal("release left tombstones")
	}
}

// TestTombSetMemory checks the cost of a tombstone in the packed form.
func TestTombSetMemory(t *testing.T) {
	ts := newTombSet()
	const n = 100_000
	for i := range n {
		k := uint64(i) * 2654435761 % (1 << 40) // any order
		ts.put(excEntry{key: k, size: allSizes, off: uint32(i), length: 7})
	}
	ts.merge()
	if got := ts.memoryBytes(); got > n*tombRecSize+osPage {
		t.Errorf("%d tombstones take %d bytes, want at most %d", n, got, n*tombRecSize+osPage)
	}
	ts.release()
}
