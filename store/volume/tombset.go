package volume

import (
	"slices"

	"github.com/google/btree"
)

// tombMergeMin is the least number of recent tombstones that triggers a
// merge into the sorted array (see tombSet).
const tombMergeMin = 1024

// tombSet holds the tombstones of a volume's index: (key, size code) ->
// (offset, length) of the tombstone needle, size 0xFFFFFFFF for a whole
// photo. Deletes come in any key order, so a set is a sorted array of
// 24-byte records plus a B-tree of the tombstones added since the last
// merge; when the B-tree holds an eighth of the array (and at least
// tombMergeMin), the two are merged in one pass. A tombstone costs about 24
// bytes, plus the B-tree's share, instead of the ~56 of a B-tree entry.
// Like the index, it is not safe for concurrent use.
type tombSet struct {
	sorted []excEntry              // ordered by (key, size), no duplicates
	recent *btree.BTreeG[excEntry] // not in sorted
	units  uint64                  // summed lengths
}

func newTombSet() *tombSet {
	return &tombSet{recent: btree.NewG[excEntry](excDegree, excLess)}
}

func tombCmp(a, b excEntry) int {
	switch {
	case excLess(a, b):
		return -1
	case excLess(b, a):
		return 1
	}
	return 0
}

// len returns the number of tombstones.
func (t *tombSet) len() int { return len(t.sorted) + t.recent.Len() }

// has reports whether the set holds a tombstone for exactly (key, size).
func (t *tombSet) has(key uint64, size uint32) bool {
	if _, ok := slices.BinarySearchFunc(t.sorted, excEntry{key: key, size: size}, tombCmp); ok {
		return true
	}
	return t.recent.Len() > 0 && t.recent.Has(excEntry{key: key, size: size})
}

// put adds the tombstone e, replacing one for the same (key, size).
func (t *tombSet) put(e excEntry) {
	if i, ok := slices.BinarySearchFunc(t.sorted, e, tombCmp); ok {
		t.units += uint64(e.length) - uint64(t.sorted[i].length)
		t.sorted[i] = e
		return
	}
	if old, ok := t.recent.ReplaceOrInsert(e); ok {
		t.units -= uint64(old.length)
	}
	t.units += uint64(e.length)
	if t.recent.Len() >= max(len(t.sorted)/8, tombMergeMin) {
		t.merge()
	}
}

// merge moves the recent tombstones into the sorted array.
func (t *tombSet) merge() {
	out := make([]excEntry, 0, t.len())
	i := 0
	t.recent.Ascend(func(e excEntry) bool {
		for i < len(t.sorted) && excLess(t.sorted[i], e) {
			out = append(out, t.sorted[i])
			i++
		}
		out = append(out, e)
		return true
	})
	t.sorted = append(out, t.sorted[i:]...)
	t.recent.Clear(false)
}

// ascend calls fn for every tombstone in (key, size) order until fn returns
// false.
func (t *tombSet) ascend(fn func(excEntry) bool) {
	i := 0
	stopped := false
	t.recent.Ascend(func(e excEntry) bool {
		for i < len(t.sorted) && excLess(t.sorted[i], e) {
			if !fn(t.sorted[i]) {
				stopped = true
				return false
			}
			i++
		}
		if !fn(e) {
			stopped = true
			return false
		}
		return true
	})
	for ; !stopped && i < len(t.sorted); i++ {
		if !fn(t.sorted[i]) {
			return
		}
	}
}

// memoryBytes estimates the heap the set holds.
func (t *tombSet) memoryBytes() int {
	return cap(t.sorted)*24 + t.recent.Len()*excEntryBytes
}
