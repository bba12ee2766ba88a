package volume

import (
	"encoding/binary"

	"github.com/google/btree"
)

const (
	// tombMergeMin is the least number of recent tombstones that triggers
	// a merge into the sorted array (see tombSet).
	tombMergeMin = 1024

	// tombMergeShare: a merge runs when the recent tombstones reach
	// 1/tombMergeShare of the sorted ones (and tombMergeMin).
	tombMergeShare = 16

	// tombRecSize is the width in bytes of one packed tombstone record.
	tombRecSize = 14

	// tombSizeAll is the size byte of a tombstone for every size of a
	// photo; packed size codes are below it.
	tombSizeAll = 0xFF

	// tombMaxLen is the longest tombstone needle, in 8-byte units, a
	// packed record holds. A tombstone holds no data (needle.Overhead, 7
	// units), so every real one fits.
	tombMaxLen = 0xFF
)

// tombSet holds the tombstones of a volume's index: (key, size code) ->
// (offset, length) of the tombstone needle, size 0xFFFFFFFF for a whole
// photo. Tombstones are permanent, so the set only grows; deletes come in
// any key order. A set is:
//
//   - a sorted array of packed 14-byte records (below), mapped outside the
//     Go heap (see offheap.go);
//   - a B-tree of the tombstones added since the last merge; when it holds
//     a sixteenth of the array (and at least tombMergeMin), the two are
//     merged in one pass into a new array and the old one is unmapped;
//   - a B-tree of the tombstones a packed record cannot hold (a size code
//     of 255 or more, a needle longer than 255 units): none in a volume
//     this package wrote, kept so that an odd idx record loses nothing.
//
// A tombstone costs 14 bytes plus, on average, a thirty-second of a B-tree
// entry (about 56 bytes), instead of the 56 of a B-tree entry.
//
// Packed record, in (key, size) order, no two with the same (key, size);
// integers little-endian:
//
//	| offset | size | field                                           |
//	|--------|------|-------------------------------------------------|
//	| 0      | 8    | key                                             |
//	| 8      | 4    | offset of the tombstone needle, 8-byte units     |
//	| 12     | 1    | size code; 255 = every size of the photo         |
//	| 13     | 1    | length of the tombstone needle, 8-byte units     |
//
// None of this is an on-disk format: the set is rebuilt from the idx and
// the volume at start-up. Like the index, it is not safe for concurrent
// use.
type tombSet struct {
	sorted []byte // packed records; a block of mem (or nil)
	mem    *offHeap
	recent *btree.BTreeG[excEntry] // packable, not in sorted
	wide   *btree.BTreeG[excEntry] // not packable; nil until needed
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

// tombPackable reports whether a packed record can hold e.
func tombPackable(e excEntry) bool {
	return (e.size < tombSizeAll || e.size == allSizes) && e.length <= tombMaxLen
}

func putTombRec(b []byte, e excEntry) {
	binary.LittleEndian.PutUint64(b[0:8], e.key)
	binary.LittleEndian.PutUint32(b[8:12], e.off)
	b[12] = byte(e.size) // allSizes becomes 0xFF
	b[13] = byte(e.length)
}

func tombRec(b []byte) excEntry {
	size := uint32(b[12])
	if size == tombSizeAll {
		size = allSizes
	}
	return excEntry{
		key:    binary.LittleEndian.Uint64(b[0:8]),
		off:    binary.LittleEndian.Uint32(b[8:12]),
		size:   size,
		length: uint32(b[13]),
	}
}

// nsorted returns the number of packed records.
func (t *tombSet) nsorted() int { return len(t.sorted) / tombRecSize }

// rec returns packed record i.
func (t *tombSet) rec(i int) excEntry {
	return tombRec(t.sorted[i*tombRecSize : (i+1)*tombRecSize])
}

// search returns the index of the first packed record not below (key,
// size), and whether it is (key, size).
func (t *tombSet) search(key uint64, size uint32) (int, bool) {
	lo, hi := 0, t.nsorted()
	want := excEntry{key: key, size: size}
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if excLess(t.rec(m), want) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < t.nsorted() {
		e := t.rec(lo)
		return lo, e.key == key && e.size == size
	}
	return lo, false
}

// len returns the number of tombstones.
func (t *tombSet) len() int {
	n := t.nsorted() + t.recent.Len()
	if t.wide != nil {
		n += t.wide.Len()
	}
	return n
}

// has reports whether the set holds a tombstone for exactly (key, size).
func (t *tombSet) has(key uint64, size uint32) bool {
	if _, ok := t.search(key, size); ok {
		return true
	}
	probe := excEntry{key: key, size: size}
	if t.recent.Len() > 0 && t.recent.Has(probe) {
		return true
	}
	return t.wide != nil && t.wide.Len() > 0 && t.wide.Has(probe)
}

// put adds the tombstone e, replacing one for the same (key, size).
func (t *tombSet) put(e excEntry) {
	i, inSorted := t.search(e.key, e.size)
	if inSorted {
		t.units -= uint64(t.rec(i).length)
		if tombPackable(e) {
			putTombRec(t.sorted[i*tombRecSize:], e)
			t.units += uint64(e.length)
			return
		}
		// Cannot happen with tombstones this package writes; keep the
		// set exact anyway.
		copy(t.sorted[i*tombRecSize:], t.sorted[(i+1)*tombRecSize:])
		t.sorted = t.sorted[:len(t.sorted)-tombRecSize]
	}
	if !tombPackable(e) {
		if old, ok := t.recent.Delete(e); ok {
			t.units -= uint64(old.length)
		}
		if t.wide == nil {
			t.wide = btree.NewG[excEntry](excDegree, excLess)
		}
		if old, ok := t.wide.ReplaceOrInsert(e); ok {
			t.units -= uint64(old.length)
		}
		t.units += uint64(e.length)
		return
	}
	if t.wide != nil {
		if old, ok := t.wide.Delete(e); ok {
			t.units -= uint64(old.length)
		}
	}
	if old, ok := t.recent.ReplaceOrInsert(e); ok {
		t.units -= uint64(old.length)
	}
	t.units += uint64(e.length)
	if t.recent.Len() >= max(t.nsorted()/tombMergeShare, tombMergeMin) {
		t.merge()
	}
}

// merge moves the recent tombstones into a new sorted array and frees the
// old one.
func (t *tombSet) merge() {
	if t.mem == nil {
		t.mem = newOffHeap()
	}
	n := t.nsorted() + t.recent.Len()
	out := t.mem.alloc(n * tombRecSize)[:0]
	i, old := 0, t.nsorted()
	t.recent.Ascend(func(e excEntry) bool {
		for ; i < old && excLess(t.rec(i), e); i++ {
			out = append(out, t.sorted[i*tombRecSize:(i+1)*tombRecSize]...)
		}
		out = out[:len(out)+tombRecSize]
		putTombRec(out[len(out)-tombRecSize:], e)
		return true
	})
	out = append(out, t.sorted[i*tombRecSize:]...)
	t.mem.release(t.sorted)
	t.sorted = out
	t.recent.Clear(false)
}

// ascend calls fn for every tombstone in (key, size) order until fn returns
// false.
func (t *tombSet) ascend(fn func(excEntry) bool) {
	// The wide tombstones, if any, are few: merge them in from a slice.
	var wide []excEntry
	if t.wide != nil {
		t.wide.Ascend(func(e excEntry) bool { wide = append(wide, e); return true })
	}
	emit := func(e excEntry) bool {
		for len(wide) > 0 && excLess(wide[0], e) {
			if !fn(wide[0]) {
				return false
			}
			wide = wide[1:]
		}
		return fn(e)
	}
	i := 0
	stopped := false
	t.recent.Ascend(func(e excEntry) bool {
		for ; i < t.nsorted() && excLess(t.rec(i), e); i++ {
			if !emit(t.rec(i)) {
				stopped = true
				return false
			}
		}
		if !emit(e) {
			stopped = true
			return false
		}
		return true
	})
	for ; !stopped && i < t.nsorted(); i++ {
		if !emit(t.rec(i)) {
			return
		}
	}
	for _, e := range wide {
		if stopped || !fn(e) {
			return
		}
	}
}

// memoryBytes estimates the bytes the set holds: the touched part of the
// sorted array (whole 4 KiB pages) and the B-trees.
func (t *tombSet) memoryBytes() int {
	n := (len(t.sorted)+osPage-1)/osPage*osPage + t.recent.Len()*excEntryBytes
	if t.wide != nil {
		n += t.wide.Len() * excEntryBytes
	}
	return n
}

// release frees the sorted array and drops every tombstone, keeping
// units (see index.release).
func (t *tombSet) release() {
	t.mem.free()
	t.mem, t.sorted = nil, nil
	t.recent.Clear(false)
	t.wide = nil
}
