package volume

import (
	"encoding/binary"
	"math/bits"

	"github.com/google/btree"

	"github.com/haybale/haybale/needle"
)

// allSizes is the size code that names every size of a photo (a tombstone for
// the whole photo). It is never stored as an entry.
const allSizes = 0xFFFFFFFF

// Layout of the packed form. None of these constants is part of an on-disk
// format: the index lives only in RAM and is rebuilt from the idx file and the
// volume at start-up.
const (
	// packedSizes is the number of slots of a packed record: the sizes t,
	// s, m, l of lane 0, or their WebP variants in lane 1.
	packedSizes = 4

	// numLanes is the number of lanes of packed records (see index).
	numLanes = 2

	// recSize is the width in bytes of one packed record (see index).
	recSize = 18

	// deltaBits is the width of a record's key delta from its group's base key.
	deltaBits = 20
	maxDelta  = 1<<deltaBits - 1

	// lenBits is the width of a slot's length; maxLen is the largest
	// length, in 8-byte units, a packed slot holds (22 bits: 32 MiB, more
	// than any resized image). Longer needles are exceptions.
	lenBits = 22
	maxLen  = 1<<lenBits - 1

	// groupRecords is the most records appends put in a group. A lookup
	// binary-searches the group bases, then the key deltas inside one
	// group.
	groupRecords = 64

	// maxGroupRecords is the most records a group spans once records have
	// been inserted into it (see insertRecord); a merge regroups them by
	// groupRecords.
	maxGroupRecords = 2 * groupRecords

	// insertWindow is the most records an insertion moves: a key that
	// arrives late (below the last packed key) is inserted in place only
	// when at most this many records follow it. Concurrent writers make
	// keys arrive a few photos late; later than this, a key becomes an
	// exception.
	insertWindow = 256

	// pageShift sets the size of a page: 1<<pageShift records. Records
	// live in pages of fixed size, mapped outside the Go heap (see
	// offheap.go), so that appending never copies the index nor leaves
	// half of a doubled array unused: a page is mapped whole when its
	// first record is appended, and the kernel backs it 4 KiB at a time as
	// records are written. A page is 147,456 bytes, exactly 36 pages of
	// 4 KiB, so nothing is rounded up.
	pageShift   = 13
	pageRecords = 1 << pageShift
	pageMask    = pageRecords - 1
	pageBytes   = pageRecords * recSize

	// osPage is the granularity at which the kernel backs mapped memory.
	osPage = 4096

	// excDegree is the degree of the exception B-tree.
	excDegree = 16

	// excEntryBytes estimates the heap bytes one exception costs in the
	// B-tree: the 24-byte item, the unused capacity of node item slices
	// (nodes filled in key order, as a merge does, stay about half full),
	// child pointers and node headers. BenchmarkIndexMemory measures it;
	// memoryBytes uses it.
	excEntryBytes = 56

	// defaultMergeMin is the least number of exceptions added since the last
	// merge that can trigger a merge (see index.mergeMin).
	defaultMergeMin = 4096
)

// index is the in-RAM needle index of one volume: it maps (key, size code) to
// the needle's offset and length in the volume file, both in 8-byte units
// (needles are 8-byte aligned and padded, so a uint32 offset reaches 32 GiB).
//
// An index is not safe for concurrent use. The volume guards it with a
// sync.RWMutex: get, sizesOf, len, liveUnits, ascend and memoryBytes only read
// and may run concurrently with each other; put and remove need the write
// lock.
//
// # Packed records
//
// Keys arrive almost sorted and the sizes t, s, m, l of a photo are appended
// together, one after another, in ascending size order, followed (in the
// same batch) by their WebP variants, size codes 8..11. The index exploits
// both: the common case is one fixed-width 18-byte record per photo and
// lane (about 4.5 bytes per stored image whether a photo has four or eight
// needles), kept in key order.
//
// A lane is a sorted array of packed records with its own groups. Lane 0
// has a slot for each of the size codes 0..3 (t, s, m, l), lane 1 for each
// of 8..11 (their WebP variants, slot i holding size code 8+i); a photo
// without WebP variants has no record in lane 1. Two lanes rather than one
// record of eight slots (29 bytes) keep photos of four needles at 18 bytes:
// one wide record would cost them 7.25 bytes per image. The record of each
// lane is the same; "size i" below means slot i of its lane. All integers
// are little-endian:
//
//	| offset | size | field                                                      |
//	|--------|------|------------------------------------------------------------|
//	| 0      | 3    | bits 0..19: key - group base key; bits 20..23: live mask,  |
//	|        |      | bit i set when size i is live                              |
//	| 3      | 4    | first offset: offset of the lowest used slot               |
//	| 7      | 11   | four lengths of 22 bits, in 8-byte units, size i at bits   |
//	|        |      | 22i..22i+21 of these 88 bits: size 0 (t), 1 (s), 2 (m),    |
//	|        |      | 3 (l); 0 = slot unused                                     |
//
// The offset of size i is the first offset plus the lengths of the slots
// before i. A slot whose live bit is clear but whose length is not zero is
// dead: a removed or rewritten size, or a filler covering bytes between two
// sizes that are not adjacent in the file. Dead slots keep their length so
// the offsets of later slots stay right.
//
// Records are grouped: a group is at most 64 consecutive records of a lane
// whose keys are all within 2^20-1 of the group's base key (the key of its
// first record) when appended; insertions (below) may grow it to 128. For
// each group the index holds its base key (uint64) and the number of its
// first record (uint32), about 0.05 bytes per image. Records live in pages
// of 8192 records (147,456 bytes), mapped outside the Go heap (see
// offheap.go).
//
// # Late keys
//
// Writers that run concurrently make a volume receive some keys a few
// photos late, below the last packed key. Such a key gets a record
// inserted in place, the records after it moved up by one, when it falls
// in a group (at or above its base, within 2^20-1 of it) that holds fewer
// than 128 records and at most 256 records follow it (see insertRecord);
// later sizes of the photo then extend that record as they would the last
// one.
//
// # Exceptions
//
// Whatever does not fit the packed form is kept in an exception set, a B-tree
// of (key, size, offset, length) ordered by (key, size): a key below the last
// packed key that cannot be inserted, a size written again (its packed slot becomes dead), a size
// appended later that does not follow the photo's last size of its lane in
// the file, size codes that no lane has a slot for (4, the original), and
// lengths of zero or of 2^22 units (32 MiB) and more. For every
// (key, size) at most one of a live packed slot and an exception exists.
// Lookups try the packed record, then the exceptions.
//
// When the exceptions added since the last merge outnumber a sixteenth of
// the packed records of both lanes (an eighth of the photos when every
// photo has its WebP variants; and at least mergeMin), the index is rebuilt
// in one O(n) pass that merges the packed entries and the exceptions in key
// order, packs every photo whose sizes can share a record of each lane and
// keeps the rest as exceptions. A stream of out-of-order or random keys
// therefore still ends up compact, and the cost of merging is amortised
// over the puts. Likewise, when the records whose every slot was removed
// (deleted photos) reach a sixteenth of the packed records (and
// mergeMin), they are dropped in place (see dropDead): a deleted photo
// then costs its tombstone only (see tombSet), not a dead record beside
// it.
type index struct {
	// lanes holds the packed records: lanes[0] of size codes 0..3,
	// lanes[1] of 8..11.
	lanes [numLanes]lane

	exc *btree.BTreeG[excEntry]
	// excMaxKey is at least the largest key in exc (an upper bound: it is
	// not lowered when exceptions are removed).
	excMaxKey uint64
	// excAtMerge is the exception count after the last merge, lowered by
	// removals.
	excAtMerge int
	// deadRecs counts the packed records removeLive emptied (every live
	// bit cleared) since the last merge.
	deadRecs int
	// mergeMin is the least number of exceptions added since the last merge
	// that triggers a merge. Tests lower it.
	mergeMin int

	live  int    // live (key, size) entries, packed and exceptions
	units uint64 // summed lengths of the live entries

	// tombs holds the tombstones of the volume, by (key, size code), size
	// 0xFFFFFFFF for a whole photo, with the tombstone needle's offset and
	// length. A tombstone is permanent: it removes the (key, size) whether
	// its needle was appended before or after it (see apply).
	tombs *tombSet
}

// lane is one sorted array of packed records and its groups.
type lane struct {
	// pages holds the packed records, pageRecords per page; every page but
	// the last is full. Each page is a block of mem, pageBytes long, sliced
	// to the records it holds.
	pages [][]byte
	mem   *offHeap
	// nrec is the number of packed records.
	nrec int
	// lastKey is the key of record nrec-1 (meaningful when nrec > 0).
	lastKey uint64

	// bases[g] is the key of group g's first record and starts[g] its
	// record number.
	bases  []uint64
	starts []uint32
}

// laneBase is the size code of slot 0 of each lane.
var laneBase = [numLanes]uint32{0, uint32(needle.SizeThumbWebP)}

// laneOf returns the lane and slot that have room for size code size, or
// false when no lane has.
func laneOf(size uint32) (ln int, slot uint32, ok bool) {
	for i, b := range laneBase {
		if size >= b && size-b < packedSizes {
			return i, size - b, true
		}
	}
	return 0, 0, false
}

// records returns the number of packed records of every lane.
func (ix *index) records() int {
	n := 0
	for i := range ix.lanes {
		n += ix.lanes[i].nrec
	}
	return n
}

// excEntry is one exception.
type excEntry struct {
	key    uint64
	size   uint32
	off    uint32
	length uint32
}

func excLess(a, b excEntry) bool {
	if a.key != b.key {
		return a.key < b.key
	}
	return a.size < b.size
}

// newIndex returns an empty index.
func newIndex() *index {
	return &index{
		exc:      btree.NewG[excEntry](excDegree, excLess),
		tombs:    newTombSet(),
		mergeMin: defaultMergeMin,
	}
}

// record returns the bytes of packed record r.
func (ix *lane) record(r int) []byte {
	p := ix.pages[r>>pageShift]
	o := (r & pageMask) * recSize
	return p[o : o+recSize : o+recSize]
}

func get24(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
}

func put24(b []byte, v uint32) {
	b[0] = byte(v)
	b[1] = byte(v >> 8)
	b[2] = byte(v >> 16)
}

func recDelta(b []byte) uint32 { return get24(b) & maxDelta }
func recMask(b []byte) uint32  { return get24(b) >> deltaBits }
func recFirst(b []byte) uint32 { return binary.LittleEndian.Uint32(b[3:7]) }
func recLen(b []byte, size uint32) uint32 {
	bit := lenBits * size
	o, sh := 7+bit/8, bit%8
	if sh+lenBits <= 24 {
		return get24(b[o:]) >> sh & maxLen
	}
	return binary.LittleEndian.Uint32(b[o:]) >> sh & maxLen
}

// setRecLen sets the length of slot size of record b; length must be at
// most maxLen.
func setRecLen(b []byte, size, length uint32) {
	bit := lenBits * size
	o, sh := 7+bit/8, bit%8
	if sh+lenBits <= 24 {
		put24(b[o:], get24(b[o:])&^(maxLen<<sh)|length<<sh)
		return
	}
	binary.LittleEndian.PutUint32(b[o:], binary.LittleEndian.Uint32(b[o:])&^(maxLen<<sh)|length<<sh)
}

func setRecMask(b []byte, mask uint32) {
	put24(b, recDelta(b)|mask<<deltaBits)
}

// slotOff returns the offset of slot size of record b.
func slotOff(b []byte, size uint32) uint32 {
	off := recFirst(b)
	for i := uint32(0); i < size; i++ {
		off += recLen(b, i)
	}
	return off
}

// find returns the number of the packed record holding key.
func (ix *lane) find(key uint64) (int, bool) {
	if ix.nrec == 0 || key > ix.lastKey || key < ix.bases[0] {
		return 0, false
	}
	if key == ix.lastKey {
		return ix.nrec - 1, true
	}
	// The last group whose base is <= key.
	lo, hi := 0, len(ix.bases)
	for hi-lo > 1 {
		m := int(uint(lo+hi) >> 1)
		if ix.bases[m] <= key {
			lo = m
		} else {
			hi = m
		}
	}
	d := key - ix.bases[lo]
	if d > maxDelta {
		return 0, false
	}
	delta := uint32(d)
	// The first record of the group whose delta is >= delta.
	first := int(ix.starts[lo])
	end := ix.nrec
	if lo+1 < len(ix.starts) {
		end = int(ix.starts[lo+1])
	}
	l, h := first, end
	for l < h {
		m := int(uint(l+h) >> 1)
		if recDelta(ix.record(m)) < delta {
			l = m + 1
		} else {
			h = m
		}
	}
	if l < end && recDelta(ix.record(l)) == delta {
		return l, true
	}
	return 0, false
}

// appendRecord appends a packed record for key, which must be above every
// packed key, and returns its bytes with the delta set and every other field
// zero.
func (ix *lane) appendRecord(key uint64) []byte {
	r := ix.nrec
	g := len(ix.bases) - 1
	if g < 0 || r-int(ix.starts[g]) >= groupRecords || key-ix.bases[g] > maxDelta {
		ix.bases = append(ix.bases, key)
		ix.starts = append(ix.starts, uint32(r))
		g++
	}
	p := r >> pageShift
	o := (r & pageMask) * recSize
	if p == len(ix.pages) {
		if ix.mem == nil {
			ix.mem = newOffHeap()
		}
		ix.pages = append(ix.pages, ix.mem.alloc(pageBytes)[:0])
	}
	page := ix.pages[p][:o+recSize]
	ix.pages[p] = page
	b := page[o : o+recSize : o+recSize]
	clear(b)
	put24(b, uint32(key-ix.bases[g]))
	ix.nrec++
	ix.lastKey = key
	return b
}

// insertRecord inserts a packed record for key, which must be below the
// last packed key and have no record, and returns its bytes with the delta
// set and every other field zero. It does so only when key is within
// maxDelta above the base of the group it falls in, that group holds fewer
// than maxGroupRecords records and at most insertWindow records follow the
// new one; otherwise it returns false and changes nothing.
func (ix *lane) insertRecord(key uint64) ([]byte, bool) {
	if ix.nrec == 0 || key >= ix.lastKey || key < ix.bases[0] {
		return nil, false
	}
	// The last group whose base is <= key, among the groups that start
	// within the window.
	g := len(ix.bases) - 1
	for g > 0 && ix.bases[g] > key {
		if ix.nrec-int(ix.starts[g]) > insertWindow {
			return nil, false
		}
		g--
	}
	d := key - ix.bases[g]
	end := ix.nrec
	if g+1 < len(ix.starts) {
		end = int(ix.starts[g+1])
	}
	if d > maxDelta || end-int(ix.starts[g]) >= maxGroupRecords {
		return nil, false
	}
	delta := uint32(d)
	// The first record of the group whose delta is above delta.
	l, h := int(ix.starts[g]), end
	for l < h {
		m := int(uint(l+h) >> 1)
		if recDelta(ix.record(m)) < delta {
			l = m + 1
		} else {
			h = m
		}
	}
	if ix.nrec-l > insertWindow {
		return nil, false
	}
	// Grow by one record and move records l.. up by one.
	r := ix.nrec
	p := r >> pageShift
	if p == len(ix.pages) {
		ix.pages = append(ix.pages, ix.mem.alloc(pageBytes)[:0])
	}
	ix.pages[p] = ix.pages[p][:(r&pageMask)*recSize+recSize]
	ix.nrec++
	for ; r > l; r-- {
		copy(ix.record(r), ix.record(r-1))
	}
	for j := g + 1; j < len(ix.starts); j++ {
		ix.starts[j]++
	}
	b := ix.record(l)
	clear(b)
	put24(b, delta)
	return b, true
}

// packable returns the lane and slot an entry of this size and length can
// take, or false when it can take none.
func packable(size, length uint32) (ln int, slot uint32, ok bool) {
	if length == 0 || length > maxLen {
		return 0, 0, false
	}
	return laneOf(size)
}

// memoryBytes returns the bytes the lane holds: its group arrays and page
// list on the heap, and the part of its pages the records have touched
// (whole 4 KiB pages: what the kernel backs).
func (ix *lane) memoryBytes() int {
	return cap(ix.pages)*24 + cap(ix.bases)*8 + cap(ix.starts)*4 + ix.pageBytes()
}

// pageBytes returns the touched part of the lane's pages, in whole 4 KiB
// pages.
func (ix *lane) pageBytes() int {
	n := 0
	for _, p := range ix.pages {
		n += (len(p) + osPage - 1) / osPage * osPage
	}
	return n
}

// release frees the lane's pages and empties it.
func (ix *lane) release() {
	ix.mem.free()
	*ix = lane{}
}

// follows reports whether a slot of size at off can follow, in the same
// record, a last used slot prevSize that ends at prevEnd. It can when it
// starts right at prevEnd, or when it starts later and a free slot between
// the two can hold the gap as a dead filler; filler is the filler's length
// (0 when none is needed).
func follows(prevSize uint32, prevEnd uint64, size, off uint32) (filler uint32, ok bool) {
	if size <= prevSize || uint64(off) < prevEnd {
		return 0, false
	}
	gap := uint64(off) - prevEnd
	switch {
	case gap == 0:
		return 0, true
	case gap <= maxLen && size-prevSize >= 2:
		return uint32(gap), true
	}
	return 0, false
}

// extend tries to add size at off to packed record b, after its used slots.
func extend(b []byte, size, off, length uint32) bool {
	last := -1
	end := uint64(recFirst(b))
	for i := uint32(0); i < packedSizes; i++ {
		if l := recLen(b, i); l != 0 {
			last = int(i)
			end += uint64(l)
		}
	}
	if last < 0 {
		return false
	}
	filler, ok := follows(uint32(last), end, size, off)
	if !ok {
		return false
	}
	if filler != 0 {
		setRecLen(b, size-1, filler)
	}
	setRecLen(b, size, length)
	setRecMask(b, recMask(b)|1<<size)
	return true
}

// put records that the needle (key, size) was appended at off with length
// units. It replaces any previous entry for (key, size). A put with size
// 0xFFFFFFFF (all sizes) names no single needle and is ignored.
func (ix *index) put(key uint64, size uint32, off, length uint32) {
	if size == allSizes {
		return
	}
	// Drop the previous entry, wherever it is.
	if ln, slot, ok := laneOf(size); ok {
		p := &ix.lanes[ln]
		if r, found := p.find(key); found {
			b := p.record(r)
			if m := recMask(b); m&(1<<slot) != 0 {
				setRecMask(b, m&^(1<<slot))
				ix.live--
				ix.units -= uint64(recLen(b, slot))
			}
		}
	}
	ix.deleteExc(key, size)
	ix.live++
	ix.units += uint64(length)

	if ln, slot, ok := packable(size, length); ok {
		p := &ix.lanes[ln]
		if p.nrec == 0 || key > p.lastKey {
			b := p.appendRecord(key)
			binary.LittleEndian.PutUint32(b[3:7], off)
			setRecLen(b, slot, length)
			setRecMask(b, 1<<slot)
			return
		}
		if r, found := p.find(key); found {
			if extend(p.record(r), slot, off, length) {
				return
			}
		} else if b, ok := p.insertRecord(key); ok {
			binary.LittleEndian.PutUint32(b[3:7], off)
			setRecLen(b, slot, length)
			setRecMask(b, 1<<slot)
			return
		}
	}
	ix.exc.ReplaceOrInsert(excEntry{key: key, size: size, off: off, length: length})
	ix.excMaxKey = max(ix.excMaxKey, key)
	if ix.exc.Len()-ix.excAtMerge >= max(ix.records()/16, ix.mergeMin) {
		ix.merge()
	}
}

// deleteExc removes the exception (key, size), if any, from the counters too.
func (ix *index) deleteExc(key uint64, size uint32) (freed uint64) {
	if ix.exc.Len() == 0 || key > ix.excMaxKey {
		return 0
	}
	old, ok := ix.exc.Delete(excEntry{key: key, size: size})
	if !ok {
		return 0
	}
	ix.live--
	ix.units -= uint64(old.length)
	ix.excAtMerge = min(ix.excAtMerge, ix.exc.Len())
	return uint64(old.length)
}

// removeLive removes the live entry (key, size), or every size of key when
// size is 0xFFFFFFFF, and returns the summed lengths, in 8-byte units, of the
// entries it removed. A packed slot keeps its length (the offsets of later
// slots depend on it); only its live bit is cleared. It does not record a
// tombstone: apply does that.
func (ix *index) removeLive(key uint64, size uint32) (freedUnits uint64) {
	sizeLane, sizeSlot, sizePacked := laneOf(size)
	for ln := range ix.lanes {
		p := &ix.lanes[ln]
		if size != allSizes && (!sizePacked || sizeLane != ln) {
			continue
		}
		r, ok := p.find(key)
		if !ok {
			continue
		}
		b := p.record(r)
		m := recMask(b)
		kill := m
		if size != allSizes {
			kill = m & (1 << sizeSlot)
		}
		var freed uint64
		for i := uint32(0); i < packedSizes; i++ {
			if kill&(1<<i) != 0 {
				freed += uint64(recLen(b, i))
				ix.live--
			}
		}
		if kill != 0 {
			setRecMask(b, m&^kill)
			ix.units -= freed
			freedUnits += freed
			if m&^kill == 0 {
				ix.deadRecs++
			}
		}
	}
	if ix.deadRecs >= max(ix.records()/16, ix.mergeMin) {
		// Once the removal is complete, exceptions included.
		defer ix.dropDead()
	}
	if size != allSizes {
		return freedUnits + ix.deleteExc(key, size)
	}
	if ix.exc.Len() == 0 || key > ix.excMaxKey {
		return freedUnits
	}
	var doomed []uint32
	ix.exc.AscendGreaterOrEqual(excEntry{key: key}, func(e excEntry) bool {
		if e.key != key {
			return false
		}
		doomed = append(doomed, e.size)
		return true
	})
	for _, s := range doomed {
		freedUnits += ix.deleteExc(key, s)
	}
	return freedUnits
}

// get returns the offset and length, in 8-byte units, of the needle (key,
// size).
func (ix *index) get(key uint64, size uint32) (off, length uint32, ok bool) {
	if ln, slot, packed := laneOf(size); packed {
		p := &ix.lanes[ln]
		if r, found := p.find(key); found {
			b := p.record(r)
			if recMask(b)&(1<<slot) != 0 {
				return slotOff(b, slot), recLen(b, slot), true
			}
		}
	}
	if ix.exc.Len() == 0 || key > ix.excMaxKey {
		return 0, 0, false
	}
	e, ok := ix.exc.Get(excEntry{key: key, size: size})
	return e.off, e.length, ok
}

// sizesOf calls fn for every live size of key, in ascending size order. fn
// must not modify the index.
func (ix *index) sizesOf(key uint64, fn func(size, off, length uint32)) {
	// The lanes' entries, in size order: every size of lane 0 is below
	// every size of lane 1.
	var packed [numLanes * packedSizes]excEntry
	n := 0
	for ln := range ix.lanes {
		p := &ix.lanes[ln]
		if r, found := p.find(key); found {
			n += unpack(p.record(r), key, laneBase[ln], packed[n:n])
		}
	}
	i := 0
	if ix.exc.Len() > 0 && key <= ix.excMaxKey {
		ix.exc.AscendGreaterOrEqual(excEntry{key: key}, func(e excEntry) bool {
			if e.key != key {
				return false
			}
			for ; i < n && packed[i].size < e.size; i++ {
				fn(packed[i].size, packed[i].off, packed[i].length)
			}
			fn(e.size, e.off, e.length)
			return true
		})
	}
	for ; i < n; i++ {
		fn(packed[i].size, packed[i].off, packed[i].length)
	}
}

// unpack appends the live entries of record b, whose key is key, in a lane
// whose slot 0 is size code base, to dst in size order and returns how many
// it appended.
func unpack(b []byte, key uint64, base uint32, dst []excEntry) int {
	mask := recMask(b)
	off := recFirst(b)
	n := 0
	for i := uint32(0); i < packedSizes; i++ {
		l := recLen(b, i)
		if mask&(1<<i) != 0 {
			dst = append(dst, excEntry{key: key, size: base + i, off: off, length: l})
			n++
		}
		off += l
	}
	return n
}

// len returns the number of live (key, size) entries.
func (ix *index) len() int { return ix.live }

// liveUnits returns the summed lengths, in 8-byte units, of the live entries.
func (ix *index) liveUnits() uint64 { return ix.units }

// packedIter walks the live packed entries of one lane in (key, size)
// order.
type packedIter struct {
	ix   *lane
	base uint32 // size code of the lane's slot 0
	r    int    // next record to unpack
	g    int    // group of record r
	buf  [packedSizes]excEntry
	n    int // entries in buf
	i    int // next entry of buf
}

// next returns the next live packed entry.
func (it *packedIter) next() (excEntry, bool) {
	for it.i == it.n {
		if it.r >= it.ix.nrec {
			return excEntry{}, false
		}
		for it.g+1 < len(it.ix.starts) && int(it.ix.starts[it.g+1]) <= it.r {
			it.g++
		}
		b := it.ix.record(it.r)
		it.n = unpack(b, it.ix.bases[it.g]+uint64(recDelta(b)), it.base, it.buf[:0])
		it.i = 0
		it.r++
	}
	e := it.buf[it.i]
	it.i++
	return e, true
}

// lanesIter walks the live packed entries of every lane in (key, size)
// order.
type lanesIter struct {
	its [numLanes]packedIter
	cur [numLanes]excEntry
	ok  [numLanes]bool
}

func (ix *index) lanesIter() *lanesIter {
	it := &lanesIter{}
	for ln := range ix.lanes {
		it.its[ln] = packedIter{ix: &ix.lanes[ln], base: laneBase[ln]}
		it.cur[ln], it.ok[ln] = it.its[ln].next()
	}
	return it
}

// next returns the next live packed entry of any lane.
func (it *lanesIter) next() (excEntry, bool) {
	best := -1
	for ln := range it.its {
		if it.ok[ln] && (best < 0 || excLess(it.cur[ln], it.cur[best])) {
			best = ln
		}
	}
	if best < 0 {
		return excEntry{}, false
	}
	e := it.cur[best]
	it.cur[best], it.ok[best] = it.its[best].next()
	return e, true
}

// each calls fn for every live entry in (key, size) order until fn returns
// false, merging the packed entries with the exceptions.
func (ix *index) each(fn func(e excEntry) bool) {
	it := ix.lanesIter()
	p, pok := it.next()
	stopped := false
	ix.exc.Ascend(func(e excEntry) bool {
		for pok && excLess(p, e) {
			if !fn(p) {
				stopped = true
				return false
			}
			p, pok = it.next()
		}
		if !fn(e) {
			stopped = true
			return false
		}
		return true
	})
	for !stopped && pok {
		if !fn(p) {
			return
		}
		p, pok = it.next()
	}
}

// ascend calls fn for every live entry, ordered by (key, size), until fn
// returns false. fn must not modify the index.
func (ix *index) ascend(fn func(key uint64, size, off, length uint32) bool) {
	ix.each(func(e excEntry) bool { return fn(e.key, e.size, e.off, e.length) })
}

// memoryBytes returns the bytes the index holds: the capacity of its pages
// and group arrays, and an estimate for the exception B-tree.
func (ix *index) memoryBytes() int {
	n := 0
	for ln := range ix.lanes {
		n += ix.lanes[ln].memoryBytes()
	}
	return n + ix.exc.Len()*excEntryBytes + ix.tombs.memoryBytes()
}

// merge rebuilds the index from its live entries: photos whose sizes can
// share a packed record get one, the rest become exceptions. It runs in time
// linear in the entries (plus the B-tree inserts of the exceptions that
// remain).
func (ix *index) merge() {
	nx := newIndex()
	nx.mergeMin = ix.mergeMin
	var group []excEntry
	flush := func() {
		nx.pack(group)
		group = group[:0]
	}
	ix.each(func(e excEntry) bool {
		if len(group) > 0 && group[0].key != e.key {
			flush()
		}
		group = append(group, e)
		return true
	})
	flush()
	nx.live, nx.units = ix.live, ix.units
	nx.tombs = ix.tombs
	nx.excAtMerge = nx.exc.Len()
	for ln := range ix.lanes {
		ix.lanes[ln].release()
	}
	*ix = *nx
}

// dropDead removes, in place, the packed records that have no live slot,
// in every lane. Unlike a merge it allocates no second copy of the
// records, so deletes never double the index's memory even for a moment.
func (ix *index) dropDead() {
	for ln := range ix.lanes {
		ix.lanes[ln].dropDead()
	}
	ix.deadRecs = 0
}

// dropDead removes the records with no live slot, sliding the others down
// and regrouping them as appendRecord groups them, and frees the pages
// left empty.
func (ix *lane) dropDead() {
	bases := make([]uint64, 0, len(ix.bases))
	starts := make([]uint32, 0, len(ix.starts))
	w, g := 0, 0
	var lastKey uint64
	for r := 0; r < ix.nrec; r++ {
		for g+1 < len(ix.starts) && int(ix.starts[g+1]) <= r {
			g++
		}
		b := ix.record(r)
		mask := recMask(b)
		if mask == 0 {
			continue
		}
		key := ix.bases[g] + uint64(recDelta(b))
		ng := len(bases) - 1
		if ng < 0 || w-int(starts[ng]) >= groupRecords || key-bases[ng] > maxDelta {
			bases = append(bases, key)
			starts = append(starts, uint32(w))
			ng++
		}
		dst := ix.record(w) // w <= r: a record already read
		copy(dst, b)
		put24(dst, uint32(key-bases[ng])|mask<<deltaBits)
		lastKey = key
		w++
	}
	keep := (w + pageRecords - 1) >> pageShift
	for p := keep; p < len(ix.pages); p++ {
		ix.mem.release(ix.pages[p])
		ix.pages[p] = nil
	}
	ix.pages = ix.pages[:keep]
	if keep > 0 {
		ix.pages[keep-1] = ix.pages[keep-1][:(w-(keep-1)*pageRecords)*recSize]
	}
	ix.nrec, ix.lastKey = w, lastKey
	ix.bases, ix.starts = bases, starts
}

// release frees the memory the index holds outside the Go heap and empties
// it, keeping its counters (live images and units, which Status reports
// after a close). The volume calls it under its write lock when it closes
// or swaps in a compacted index; an index that is dropped without it is
// freed by a cleanup once unreachable (see offheap.go).
func (ix *index) release() {
	for ln := range ix.lanes {
		ix.lanes[ln].release()
	}
	ix.exc.Clear(false)
	ix.excMaxKey, ix.excAtMerge = 0, 0
	ix.tombs.release()
}

// pack adds the live entries of one key, in size order, to an index being
// rebuilt: in each lane, the largest set of them that can share a packed
// record goes into one, the others become exceptions. Keys must come in
// ascending order.
func (ix *index) pack(entries []excEntry) {
	if len(entries) == 0 {
		return
	}
	// packedAt has bit i set when entries[i] went into a record. A key has
	// at most one entry per valid size code, far fewer than 64.
	var packedAt uint64
	for ln := range ix.lanes {
		// The candidates of this lane, with their slot as size.
		var cand [packedSizes]excEntry
		var candAt [packedSizes]int
		n := 0
		for i, e := range entries {
			if l, slot, ok := packable(e.size, e.length); ok && l == ln && n < packedSizes && i < 64 {
				cand[n], candAt[n] = excEntry{key: e.key, size: slot, off: e.off, length: e.length}, i
				n++
			}
		}
		// The largest subset of the candidates that fits one record.
		chosen := uint8(0)
		for c := n; c > 0 && chosen == 0; c-- {
			for m := uint8(1); m < 1<<n; m++ {
				if bits.OnesCount8(m) == c && fitsOneRecord(cand[:n], m) {
					chosen = m
					break
				}
			}
		}
		if chosen == 0 {
			continue
		}
		p := &ix.lanes[ln]
		var b []byte
		prevSlot, prevEnd := uint32(0), uint64(0)
		for j := 0; j < n; j++ {
			if chosen&(1<<j) == 0 {
				continue
			}
			e := cand[j]
			if b == nil {
				b = p.appendRecord(e.key)
				binary.LittleEndian.PutUint32(b[3:7], e.off)
			} else if filler, _ := follows(prevSlot, prevEnd, e.size, e.off); filler != 0 {
				setRecLen(b, e.size-1, filler)
			}
			setRecLen(b, e.size, e.length)
			setRecMask(b, recMask(b)|1<<e.size)
			prevSlot, prevEnd = e.size, uint64(e.off)+uint64(e.length)
			packedAt |= 1 << candAt[j]
		}
	}
	for i, e := range entries {
		if i < 64 && packedAt&(1<<i) != 0 {
			continue
		}
		ix.exc.ReplaceOrInsert(e)
		ix.excMaxKey = max(ix.excMaxKey, e.key)
	}
}

// fitsOneRecord reports whether the candidates selected by mask, in size
// order, can share one packed record.
func fitsOneRecord(cand []excEntry, mask uint8) bool {
	first := true
	prevSize, prevEnd := uint32(0), uint64(0)
	for j, e := range cand {
		if mask&(1<<j) == 0 {
			continue
		}
		if !first {
			if _, ok := follows(prevSize, prevEnd, e.size, e.off); !ok {
				return false
			}
		}
		first = false
		prevSize, prevEnd = e.size, uint64(e.off)+uint64(e.length)
	}
	return true
}
