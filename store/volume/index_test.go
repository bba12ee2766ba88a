package volume

import (
	"encoding/binary"
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/haybale/haybale/needle"
)

var indexSeed = flag.Uint64("index.seed", 0, "seed of TestIndexModel; 0 picks one from the clock")

// ientry is one (key, size) -> (off, length) entry, as the tests see it.
type ientry struct {
	key    uint64
	size   uint32
	off    uint32
	length uint32
}

type ival struct{ off, length uint32 }

// indexModel is the obvious implementation the index is checked against:
// key -> size -> entry.
type indexModel map[uint64]map[uint32]ival

func (m indexModel) put(key uint64, size, off, length uint32) {
	if size == allSizes {
		return
	}
	if m[key] == nil {
		m[key] = map[uint32]ival{}
	}
	m[key][size] = ival{off, length}
}

func (m indexModel) get(key uint64, size uint32) (ival, bool) {
	v, ok := m[key][size]
	return v, ok
}

func (m indexModel) len() int {
	n := 0
	for _, sizes := range m {
		n += len(sizes)
	}
	return n
}

func (m indexModel) removeLive(key uint64, size uint32) (freed uint64) {
	for sz, v := range m[key] {
		if size == allSizes || size == sz {
			freed += uint64(v.length)
			delete(m[key], sz)
		}
	}
	if len(m[key]) == 0 {
		delete(m, key)
	}
	return freed
}

func (m indexModel) sorted() []ientry {
	var out []ientry
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m.sizesOf(k)...)
	}
	return out
}

func (m indexModel) sizesOf(key uint64) []ientry {
	var out []ientry
	for _, sz := range slices.Sorted(maps.Keys(m[key])) {
		v := m[key][sz]
		out = append(out, ientry{key, sz, v.off, v.length})
	}
	return out
}

func ascendAll(ix *index) []ientry {
	var out []ientry
	ix.ascend(func(key uint64, size, off, length uint32) bool {
		out = append(out, ientry{key, size, off, length})
		return true
	})
	return out
}

func sizesOfAll(ix *index, key uint64) []ientry {
	var out []ientry
	ix.sizesOf(key, func(size, off, length uint32) {
		out = append(out, ientry{key, size, off, length})
	})
	return out
}

// checkIndex verifies the internal invariants of ix.
func checkIndex(ix *index) error {
	live, units := 0, uint64(0)
	for ln := range ix.lanes {
		l, u, err := checkLane(ix, ln)
		if err != nil {
			return fmt.Errorf("lane %d: %w", ln, err)
		}
		live += l
		units += u
	}
	var err error
	ix.exc.Ascend(func(e excEntry) bool {
		if e.key > ix.excMaxKey {
			err = fmt.Errorf("exception key %d above excMaxKey %d", e.key, ix.excMaxKey)
			return false
		}
		if e.size == allSizes {
			err = fmt.Errorf("exception with size all for key %d", e.key)
			return false
		}
		live++
		units += uint64(e.length)
		return true
	})
	if err != nil {
		return err
	}
	if live != ix.live || units != ix.units {
		return fmt.Errorf("counted %d entries, %d units; counters say %d, %d", live, units, ix.live, ix.units)
	}
	return nil
}

// checkLane verifies the invariants of lane ln of ix and returns the
// number and summed lengths of its live entries.
func checkLane(ix *index, ln int) (live int, units uint64, err error) {
	p := &ix.lanes[ln]
	if p.nrec*recSize != func() int {
		n := 0
		for i, pg := range p.pages {
			if i < len(p.pages)-1 && (len(pg) != pageRecords*recSize || cap(pg) != len(pg)) {
				return -1
			}
			n += len(pg)
		}
		return n
	}() {
		return 0, 0, fmt.Errorf("pages do not hold exactly %d records", p.nrec)
	}
	if len(p.bases) != len(p.starts) {
		return 0, 0, fmt.Errorf("%d group bases, %d starts", len(p.bases), len(p.starts))
	}
	if p.nrec > 0 && (len(p.starts) == 0 || p.starts[0] != 0) {
		return 0, 0, fmt.Errorf("first group does not start at record 0")
	}
	g := 0
	var prev uint64
	for r := 0; r < p.nrec; r++ {
		for g+1 < len(p.starts) && int(p.starts[g+1]) <= r {
			g++
		}
		b := p.record(r)
		if r == int(p.starts[g]) && recDelta(b) != 0 {
			return 0, 0, fmt.Errorf("record %d starts group %d with delta %d", r, g, recDelta(b))
		}
		if r-int(p.starts[g]) >= maxGroupRecords {
			return 0, 0, fmt.Errorf("group %d has more than %d records", g, maxGroupRecords)
		}
		key := p.bases[g] + uint64(recDelta(b))
		if r > 0 && key <= prev {
			return 0, 0, fmt.Errorf("record %d key %d not above %d", r, key, prev)
		}
		prev = key
		used := false
		for s := uint32(0); s < packedSizes; s++ {
			l := recLen(b, s)
			used = used || l != 0
			if recMask(b)&(1<<s) == 0 {
				continue
			}
			if l == 0 {
				return 0, 0, fmt.Errorf("key %d slot %d live with length 0", key, s)
			}
			live++
			units += uint64(l)
			if _, ok := ix.exc.Get(excEntry{key: key, size: laneBase[ln] + s}); ok {
				return 0, 0, fmt.Errorf("key %d size %d both packed and exception", key, laneBase[ln]+s)
			}
		}
		if !used {
			return 0, 0, fmt.Errorf("record %d (key %d) has no used slot", r, key)
		}
	}
	if p.nrec > 0 && prev != p.lastKey {
		return 0, 0, fmt.Errorf("lastKey %d, last record key %d", p.lastKey, prev)
	}
	return live, units, nil
}

// compareIndex checks every observable answer of ix against m.
func compareIndex(ix *index, m indexModel) error {
	if err := checkIndex(ix); err != nil {
		return err
	}
	want := m.sorted()
	got := ascendAll(ix)
	if !slices.Equal(got, want) {
		return fmt.Errorf("ascend: got %d entries, want %d; first difference %s", len(got), len(want), firstDiff(got, want))
	}
	if ix.len() != m.len() {
		return fmt.Errorf("len %d, want %d", ix.len(), m.len())
	}
	var units uint64
	for _, e := range want {
		units += uint64(e.length)
		off, length, ok := ix.get(e.key, e.size)
		if !ok || off != e.off || length != e.length {
			return fmt.Errorf("get(%d, %d) = %d, %d, %v; want %d, %d", e.key, e.size, off, length, ok, e.off, e.length)
		}
	}
	if ix.liveUnits() != units {
		return fmt.Errorf("liveUnits %d, want %d", ix.liveUnits(), units)
	}
	return nil
}

func firstDiff(got, want []ientry) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("at %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if len(got) > len(want) {
		return fmt.Sprintf("extra %+v", got[len(want)])
	}
	if len(want) > len(got) {
		return fmt.Sprintf("missing %+v", want[len(got)])
	}
	return "none"
}

// indexSim drives an index and its model with a workload shaped like a
// volume's: mostly in-order photos appended contiguously, with every kind of
// irregularity mixed in.
type indexSim struct {
	rng   *rand.Rand
	ix    *index
	m     indexModel
	tail  uint32 // next append offset, in units; wraps like a full volume
	last  uint64 // last in-order key
	keys  []uint64
	trace []string
}

func (s *indexSim) length() uint32 {
	switch p := s.rng.IntN(100); {
	case p < 2:
		return 0
	case p < 4:
		return maxLen + 1 + s.rng.Uint32N(1000)
	case p < 5:
		return maxLen
	case p < 8:
		return 1 + s.rng.Uint32N(4)
	default:
		return 7 + s.rng.Uint32N(60000)
	}
}

func (s *indexSim) offset() uint32 {
	if s.rng.IntN(50) == 0 {
		return math.MaxUint32 - s.rng.Uint32N(100)
	}
	if s.rng.IntN(50) == 0 {
		return s.rng.Uint32()
	}
	off := s.tail
	if s.rng.IntN(10) == 0 {
		off += 7 + s.rng.Uint32N(100) // a tombstone or another needle in between
	}
	return off
}

func (s *indexSim) put(key uint64, size, off, length uint32) {
	s.trace = append(s.trace, fmt.Sprintf("put(%d, %d, %d, %d)", key, size, off, length))
	s.ix.put(key, size, off, length)
	s.m.put(key, size, off, length)
	s.tail = off + length
}

// photo appends sizes of key contiguously, in ascending order.
func (s *indexSim) photo(key uint64) {
	off := s.offset()
	sizes := []uint32{0, 1, 2, 3}
	if s.rng.IntN(2) == 0 {
		sizes = append(sizes, 8, 9, 10, 11) // the WebP variants
	}
	if s.rng.IntN(8) == 0 {
		sizes = sizes[:0]
		for _, sz := range needle.StoredSizes {
			if s.rng.IntN(2) == 0 {
				sizes = append(sizes, uint32(sz))
			}
		}
	}
	for _, sz := range sizes {
		l := s.length()
		s.put(key, sz, off, l)
		off += l
	}
	s.keys = append(s.keys, key)
}

func (s *indexSim) someKey() uint64 {
	if len(s.keys) == 0 || s.rng.IntN(10) == 0 {
		return s.rng.Uint64N(s.last + 2)
	}
	return s.keys[s.rng.IntN(len(s.keys))]
}

func (s *indexSim) someSize() uint32 {
	switch p := s.rng.IntN(40); {
	case p == 0:
		return 5 + s.rng.Uint32N(10)
	case p == 1:
		return allSizes - 1
	case p < 5:
		return 4
	case p < 20:
		return 8 + s.rng.Uint32N(4)
	default:
		return s.rng.Uint32N(4)
	}
}

func (s *indexSim) step() error {
	switch p := s.rng.IntN(100); {
	case p < 35: // the next photo, in order
		gap := 1 + s.rng.Uint64N(1000)
		switch s.rng.IntN(100) {
		case 0:
			gap = maxDelta - 50 + s.rng.Uint64N(100)
		case 1:
			gap = 1<<32 + s.rng.Uint64N(1<<33)
		}
		if s.last+gap < s.last {
			gap = 1
		}
		s.last += gap
		s.photo(s.last)
	case p < 42: // an out-of-order photo (maybe an existing key)
		s.photo(s.someKey())
	case p < 48: // one size rewritten
		s.put(s.someKey(), s.someSize(), s.offset(), s.length())
	case p < 52: // a later size of the last key
		sz := s.rng.Uint32N(4)
		if s.rng.IntN(10) == 0 {
			sz = s.someSize()
		}
		s.put(s.last, sz, s.offset(), s.length())
	case p < 53: // a put for all sizes names no needle and is ignored
		s.put(s.someKey(), allSizes, s.offset(), s.length())
	case p < 54: // extreme keys
		k := uint64(0)
		if s.rng.IntN(4) == 0 {
			k = math.MaxUint64 - s.rng.Uint64N(2)
		}
		s.put(k, s.someSize(), s.offset(), s.length())
		s.keys = append(s.keys, k)
	case p < 62:
		key, size := s.someKey(), s.someSize()
		s.trace = append(s.trace, fmt.Sprintf("remove(%d, %d)", key, size))
		got, want := s.ix.removeLive(key, size), s.m.removeLive(key, size)
		if got != want {
			return fmt.Errorf("remove(%d, %d) = %d, want %d", key, size, got, want)
		}
	case p < 66:
		key := s.someKey()
		s.trace = append(s.trace, fmt.Sprintf("remove(%d, all)", key))
		got, want := s.ix.removeLive(key, allSizes), s.m.removeLive(key, allSizes)
		if got != want {
			return fmt.Errorf("remove(%d, all) = %d, want %d", key, got, want)
		}
	case p < 85:
		key, size := s.someKey(), s.someSize()
		if s.rng.IntN(20) == 0 {
			size = allSizes
		}
		off, length, ok := s.ix.get(key, size)
		v, wok := s.m.get(key, size)
		if ok != wok || off != v.off || length != v.length {
			return fmt.Errorf("get(%d, %d) = %d, %d, %v; want %d, %d, %v", key, size, off, length, ok, v.off, v.length, wok)
		}
	case p < 95:
		key := s.someKey()
		got, want := sizesOfAll(s.ix, key), s.m.sizesOf(key)
		if !slices.Equal(got, want) {
			return fmt.Errorf("sizesOf(%d) = %+v, want %+v", key, got, want)
		}
	default:
		if s.ix.len() != s.m.len() {
			return fmt.Errorf("len %d, want %d", s.ix.len(), s.m.len())
		}
	}
	return nil
}

// TestIndexModel runs long random operation sequences against the index and
// a map, comparing every answer. A failure names its seed; rerun it with
// -index.seed.
func TestIndexModel(t *testing.T) {
	seed := *indexSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -index.seed=%d)", seed, seed)
	runs, steps := 8, 12000
	if testing.Short() {
		runs, steps = 3, 5000
	}
	for run := range runs {
		runSeed := seed + uint64(run)
		rng := rand.New(rand.NewPCG(runSeed, runSeed^0x9e3779b97f4a7c15))
		ix := newIndex()
		ix.mergeMin = []int{1, 3, 16, 64, 512, defaultMergeMin}[rng.IntN(6)]
		s := &indexSim{rng: rng, ix: ix, m: indexModel{}, last: rng.Uint64N(1 << 40)}
		merges := 0
		for i := range steps {
			exc := ix.exc
			err := s.step()
			if err == nil && (ix.exc != exc || i%2000 == 0) {
				// A merge replaces the exception tree: check everything
				// after each one.
				merges++
				err = compareIndex(ix, s.m)
			}
			if err != nil {
				from := max(0, len(s.trace)-8)
				t.Fatalf("seed %d (run %d, mergeMin %d), step %d: %v\nlast operations:\n%v",
					runSeed, run, ix.mergeMin, i, err, s.trace[from:])
			}
			if len(s.trace) > 64 {
				s.trace = append(s.trace[:0], s.trace[len(s.trace)-8:]...)
			}
		}
		if err := compareIndex(s.ix, s.m); err != nil {
			t.Fatalf("seed %d (run %d), at the end: %v", runSeed, run, err)
		}
		t.Logf("run %d: mergeMin %d, %d entries, %d records, %d exceptions, %d full checks",
			run, ix.mergeMin, ix.len(), ix.records(), ix.exc.Len(), merges)
		// A merge of the final state must not change any answer either.
		s.ix.merge()
		if err := compareIndex(s.ix, s.m); err != nil {
			t.Fatalf("seed %d (run %d), after a final merge: %v", runSeed, run, err)
		}
	}
}

// TestIndexCases covers the edge cases one by one.
func TestIndexCases(t *testing.T) {
	type op struct {
		remove bool
		key    uint64
		size   uint32
		off    uint32
		length uint32
		freed  uint64 // for remove
	}
	put := func(key uint64, size, off, length uint32) op {
		return op{key: key, size: size, off: off, length: length}
	}
	rm := func(key uint64, size uint32, freed uint64) op {
		return op{remove: true, key: key, size: size, freed: freed}
	}
	// photo appends t, s, m, l at off with lengths 10, 20, 30, 40.
	photo := func(key uint64, off uint32) []op {
		return []op{put(key, 0, off, 10), put(key, 1, off+10, 20), put(key, 2, off+30, 30), put(key, 3, off+60, 40)}
	}
	// webp appends t.webp, s.webp, m.webp, l.webp at off with lengths 5,
	// 11, 17, 23.
	webp := func(key uint64, off uint32) []op {
		return []op{put(key, 8, off, 5), put(key, 9, off+5, 11), put(key, 10, off+16, 17), put(key, 11, off+33, 23)}
	}
	cat := func(parts ...[]op) []op { return slices.Concat(parts...) }

	tests := []struct {
		name string
		ops  []op
		exc  int // exceptions expected at the end
		recs int // packed records expected at the end
	}{
		{name: "empty", ops: nil},
		{name: "one photo packs", ops: photo(5, 8), recs: 1},
		{name: "photos in order", ops: cat(photo(5, 8), photo(9, 108), photo(1000, 300)), recs: 3},
		{name: "out-of-order key", ops: cat(photo(9, 8), photo(5, 108)), recs: 1, exc: 4},
		{name: "rewrite of one size", ops: cat(photo(5, 8), []op{put(5, 1, 500, 22)}), recs: 1, exc: 1},
		{name: "rewrite of the last size", ops: cat(photo(5, 8), []op{put(5, 3, 108, 41)}), recs: 1, exc: 1},
		{name: "rewrite in an older photo", ops: cat(photo(5, 8), photo(6, 108), []op{put(5, 0, 208, 11)}), recs: 2, exc: 1},
		{name: "later size contiguous", ops: []op{put(5, 0, 8, 10), put(5, 2, 18, 30)}, recs: 1},
		{name: "later size after a gap uses a filler slot", ops: []op{put(5, 0, 8, 10), put(5, 2, 50, 30), put(5, 3, 80, 5)}, recs: 1},
		{name: "later size after a gap, no free slot", ops: []op{put(5, 0, 8, 10), put(5, 1, 50, 30)}, recs: 1, exc: 1},
		{name: "later size before the run", ops: []op{put(5, 1, 100, 10), put(5, 2, 8, 30)}, recs: 1, exc: 1},
		{name: "size below the run", ops: []op{put(5, 2, 100, 10), put(5, 1, 110, 30)}, recs: 1, exc: 1},
		{name: "original is an exception", ops: cat(photo(5, 8), []op{put(5, 4, 108, 1000)}), recs: 1, exc: 1},
		{name: "odd size codes", ops: []op{put(5, 7, 8, 10), put(5, allSizes-1, 18, 10)}, exc: 2},
		{name: "put for all sizes is ignored", ops: []op{put(5, allSizes, 8, 10)}},
		{name: "length zero", ops: []op{put(5, 0, 8, 0), put(5, 1, 8, 10)}, recs: 1, exc: 1},
		{name: "longest packed length", ops: []op{put(5, 0, 8, maxLen), put(5, 1, 8+maxLen, maxLen+1)}, recs: 1, exc: 1},
		{name: "offset at the end of the range", ops: []op{put(5, 0, math.MaxUint32-5, 10), put(5, 1, 4, 10)}, recs: 1, exc: 1},
		{name: "key gap of the delta width", ops: cat(photo(5, 8), photo(5+maxDelta, 108), photo(5+maxDelta+1, 208)), recs: 3},
		{name: "key gap of 2^40", ops: cat(photo(5, 8), photo(5+1<<40, 108), photo(6+1<<40, 208)), recs: 3},
		{name: "key 0 and the largest key", ops: cat(photo(0, 8), photo(math.MaxUint64, 108), []op{put(math.MaxUint64, 4, 208, 5), put(1, 0, 300, 5)}), recs: 3, exc: 1},
		{name: "remove one size", ops: cat(photo(5, 8), []op{rm(5, 1, 20), rm(5, 1, 0)}), recs: 1},
		{name: "remove all sizes", ops: cat(photo(5, 8), []op{put(5, 4, 108, 7), put(5, 1, 115, 3), rm(5, allSizes, 90), rm(5, allSizes, 0)}), recs: 1},
		{name: "remove all sizes of the largest key", ops: []op{put(math.MaxUint64, 0, 8, 10), put(math.MaxUint64, 4, 18, 5), put(math.MaxUint64, 9, 23, 5), rm(math.MaxUint64, allSizes, 20)}, recs: 2},
		{name: "eight needles pack in two records", ops: cat(photo(5, 8), webp(5, 108), photo(9, 200), webp(9, 300)), recs: 4},
		{name: "photos with and without WebP", ops: cat(photo(5, 8), photo(9, 108), webp(9, 208), photo(12, 300)), recs: 4},
		{name: "WebP alone", ops: webp(5, 8), recs: 1},
		{name: "WebP after a gap", ops: cat(photo(5, 8), webp(5, 500)), recs: 2},
		{name: "WebP interleaved", ops: []op{put(5, 0, 8, 10), put(5, 8, 18, 4), put(5, 1, 22, 20), put(5, 9, 42, 4)}, recs: 2, exc: 2},
		{name: "WebP rewritten", ops: cat(photo(5, 8), webp(5, 108), []op{put(5, 10, 300, 9)}), recs: 2, exc: 1},
		{name: "WebP out of order", ops: cat(photo(9, 8), webp(9, 108), photo(5, 200), webp(5, 300)), recs: 2, exc: 8},
		{name: "remove one WebP size", ops: cat(photo(5, 8), webp(5, 108), []op{rm(5, 9, 11), rm(5, 9, 0), rm(5, 1, 20)}), recs: 2},
		{name: "remove all sizes with WebP", ops: cat(photo(5, 8), webp(5, 108), []op{put(5, 4, 200, 7), rm(5, allSizes, 163)}), recs: 2},
		{name: "size codes between the lanes", ops: cat(photo(5, 8), []op{put(5, 5, 108, 3), put(5, 7, 111, 3), put(5, 12, 114, 3)}, webp(5, 117)), recs: 2, exc: 3},
		{name: "remove missing", ops: cat(photo(5, 8), []op{rm(4, 0, 0), rm(6, allSizes, 0), rm(5, 4, 0), rm(5, 77, 0)}), recs: 1},
		{name: "put after remove goes elsewhere", ops: cat(photo(5, 8), []op{rm(5, allSizes, 100), put(5, 2, 108, 9)}), recs: 1, exc: 1},
		{name: "exception replaced by a packed slot", ops: []op{put(9, 1, 8, maxLen+1), put(9, 1, 8, 12)}, recs: 1},
		{name: "exception above the packed keys then packed", ops: []op{put(9, 4, 8, 12), put(9, 0, 20, 3), put(9, 1, 23, 3)}, recs: 1, exc: 1},
		{name: "late key inserted in place", ops: cat(photo(5, 8), photo(9, 108), photo(7, 208), photo(6, 308)), recs: 4},
		{name: "late key with WebP inserted in place", ops: cat(photo(5, 8), webp(5, 108), photo(9, 200), webp(9, 300), photo(7, 400), webp(7, 500)), recs: 6},
		{name: "late key below every packed key", ops: cat(photo(5, 8), photo(9, 108), photo(4, 208)), recs: 2, exc: 4},
		{name: "late key rewritten", ops: cat(photo(5, 8), photo(9, 108), photo(7, 208), []op{put(7, 1, 400, 9)}), recs: 3, exc: 1},
		{name: "late key too far back", ops: func() []op {
			ops := photo(10, 8)
			for i := range uint64(insertWindow + 1) {
				ops = append(ops, photo(12+i, uint32(108+i*100))...)
			}
			return append(ops, photo(11, 1<<30)...)
		}(), recs: insertWindow + 2, exc: 4},
		{name: "late keys fill a group to its limit", ops: func() []op {
			// One group of keys 1000, 1003, ...; then keys between
			// them, late: inserted until the group holds
			// maxGroupRecords, the next one an exception.
			var ops []op
			for i := range uint64(groupRecords) {
				ops = append(ops, photo(1000+3*i, uint32(8+i*100))...)
			}
			for i := range uint64(maxGroupRecords - groupRecords - 1) {
				ops = append(ops, photo(1001+3*i, uint32(1<<20+i*100))...)
			}
			return cat(ops, photo(1002, 1<<29), photo(1005, 1<<30))
		}(), recs: maxGroupRecords, exc: 4},
		{name: "many groups", ops: func() []op {
			var ops []op
			for i := range uint64(300) {
				ops = append(ops, photo(10+i*7, uint32(8+i*100))...)
			}
			return ops
		}(), recs: 300},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ix, m := newIndex(), indexModel{}
			for i, o := range tc.ops {
				if o.remove {
					got, want := ix.removeLive(o.key, o.size), m.removeLive(o.key, o.size)
					if got != want || got != o.freed {
						t.Fatalf("op %d: remove(%d, %d) = %d; model %d, table %d", i, o.key, o.size, got, want, o.freed)
					}
					continue
				}
				ix.put(o.key, o.size, o.off, o.length)
				m.put(o.key, o.size, o.off, o.length)
			}
			if err := compareIndex(ix, m); err != nil {
				t.Fatal(err)
			}
			for _, e := range m.sorted() {
				if got, want := sizesOfAll(ix, e.key), m.sizesOf(e.key); !slices.Equal(got, want) {
					t.Fatalf("sizesOf(%d) = %+v, want %+v", e.key, got, want)
				}
			}
			if ix.exc.Len() != tc.exc || ix.records() != tc.recs {
				t.Errorf("%d exceptions and %d records, want %d and %d", ix.exc.Len(), ix.records(), tc.exc, tc.recs)
			}
			ix.merge()
			if err := compareIndex(ix, m); err != nil {
				t.Fatalf("after merge: %v", err)
			}
		})
	}
}

func TestIndexEmpty(t *testing.T) {
	ix := newIndex()
	if _, _, ok := ix.get(1, 0); ok {
		t.Error("get on an empty index found something")
	}
	if ix.removeLive(1, allSizes) != 0 || ix.len() != 0 || ix.liveUnits() != 0 {
		t.Error("empty index reports entries")
	}
	ix.sizesOf(1, func(size, off, length uint32) { t.Error("sizesOf on an empty index called fn") })
	ix.ascend(func(key uint64, size, off, length uint32) bool {
		t.Error("ascend on an empty index called fn")
		return true
	})
	ix.merge()
	if err := checkIndex(ix); err != nil {
		t.Error(err)
	}
}

// TestIndexMergeCompacts checks that out-of-order photos, which first land in
// the exceptions, are packed again by a merge, and that a rewritten size
// does not keep the rest of its photo out of the packed form.
func TestIndexMergeCompacts(t *testing.T) {
	const photos = 20000
	ix, m := newIndex(), indexModel{}
	ix.mergeMin = 100
	rng := rand.New(rand.NewPCG(1, 2))
	keys := make([]uint64, photos)
	for i := range keys {
		keys[i] = uint64(i+1) * 3
	}
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	off := uint32(8)
	for _, k := range keys {
		for sz := range uint32(4) {
			l := 1 + rng.Uint32N(5000)
			ix.put(k, sz, off, l)
			m.put(k, sz, off, l)
			off += l
		}
	}
	if ix.exc.Len() > photos/2 {
		t.Errorf("%d exceptions after %d shuffled photos; merges should keep them under %d", ix.exc.Len(), photos, photos/2)
	}
	ix.merge()
	if ix.exc.Len() != 0 || ix.records() != photos {
		t.Errorf("after a merge: %d exceptions, %d records; want 0, %d", ix.exc.Len(), ix.records(), photos)
	}
	// Rewrite the thumbnail of every tenth photo: the other three sizes stay
	// packed after a merge, the thumbnail is the only exception.
	for i, k := range keys {
		if i%10 == 0 {
			ix.put(k, 0, off, 3)
			m.put(k, 0, off, 3)
			off += 3
		}
	}
	ix.merge()
	if want := photos / 10; ix.exc.Len() != want || ix.records() != photos {
		t.Errorf("after rewrites and a merge: %d exceptions, %d records; want %d, %d", ix.exc.Len(), ix.records(), want, photos)
	}
	if err := compareIndex(ix, m); err != nil {
		t.Fatal(err)
	}
	if ix.memoryBytes() < photos*recSize {
		t.Errorf("memoryBytes %d below the packed records alone (%d)", ix.memoryBytes(), photos*recSize)
	}
}

// TestIndexAscendStops checks that ascend stops when fn returns false, both
// inside the packed records and inside the exceptions.
func TestIndexAscendStops(t *testing.T) {
	ix := newIndex()
	for k := uint64(1); k <= 10; k++ {
		ix.put(k*10, 0, uint32(k*100), 5)
		ix.put(k*10, 4, uint32(k*100+50), 5)
	}
	for stop := 1; stop <= 20; stop++ {
		n := 0
		ix.ascend(func(key uint64, size, off, length uint32) bool {
			n++
			return n < stop
		})
		if n != stop {
			t.Errorf("ascend asked to stop after %d entries called fn %d times", stop, n)
		}
	}
}

// TestIndexMergeDropsDeadRecords deletes a quarter of the photos, in any
// order: merges drop the records left without a live slot, so the packed
// records stay within a sixteenth of the live photos, and every lookup
// still agrees with the model.
func TestIndexMergeDropsDeadRecords(t *testing.T) {
	const photos = 20000
	ix, m := newIndex(), indexModel{}
	ix.mergeMin = 100
	w := newPhotoWorkload(6)
	w.webp = true
	keys := w.keys(photos, 0)
	for _, k := range keys {
		for _, sz := range []uint32{0, 1, 2, 3, 8, 9, 10, 11} {
			l := w.length(sz)
			ix.put(k, sz, w.tail, l)
			m.put(k, sz, w.tail, l)
			w.tail += l
		}
	}
	doomed := slices.Clone(keys[:photos/4])
	w.rng.Shuffle(len(doomed), func(i, j int) { doomed[i], doomed[j] = doomed[j], doomed[i] })
	for i, k := range doomed {
		size := uint32(allSizes)
		if i%10 == 0 {
			// Some photos lose their sizes one by one.
			for _, sz := range []uint32{0, 1, 2, 3, 8, 9, 10} {
				if got, want := ix.removeLive(k, sz), m.removeLive(k, sz); got != want {
					t.Fatalf("removeLive(%d, %d) = %d, model %d", k, sz, got, want)
				}
			}
			size = 11
		}
		if got, want := ix.removeLive(k, size), m.removeLive(k, size); got != want {
			t.Fatalf("removeLive(%d, %d) = %d, model %d", k, size, got, want)
		}
	}
	if err := compareIndex(ix, m); err != nil {
		t.Fatal(err)
	}
	live := 2 * (photos - photos/4) // records of the photos left: two lanes each
	if ix.records() > live+live/16+1 {
		t.Errorf("%d packed records for %d live ones: dead records were not dropped", ix.records(), live)
	}
	// 20,000 photos took 3 pages per lane; 15,000 fit in 2.
	if got := lanePages(ix); got != 4 {
		t.Errorf("%d pages after the deletes, want 4: emptied pages were not freed", got)
	}
	ix.release()
}

// TestRecordLengths sets the four 22-bit lengths of a record in random
// order to random values, the extremes included, and reads every field
// back: no length spills into its neighbours, the key delta, the live mask
// or the first offset.
func TestRecordLengths(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 9))
	b := make([]byte, recSize)
	for step := range 20000 {
		var want [packedSizes]uint32
		delta, mask, first := r.Uint32N(maxDelta+1), r.Uint32N(16), r.Uint32()
		put24(b, delta|mask<<deltaBits)
		binary.LittleEndian.PutUint32(b[3:7], first)
		for _, i := range r.Perm(packedSizes) {
			switch r.IntN(3) {
			case 0:
				want[i] = maxLen
			case 1:
				want[i] = r.Uint32N(maxLen + 1)
			}
			setRecLen(b, uint32(i), want[i])
		}
		for i := range uint32(packedSizes) {
			if got := recLen(b, i); got != want[i] {
				t.Fatalf("step %d: length %d = %d, want %d", step, i, got, want[i])
			}
		}
		if recDelta(b) != delta || recMask(b) != mask || recFirst(b) != first {
			t.Fatalf("step %d: delta %d mask %d first %d, want %d %d %d", step, recDelta(b), recMask(b), recFirst(b), delta, mask, first)
		}
	}
}
