package volume

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
)

// benchPhotos is the number of photos (of four sizes each) the index
// benchmarks hold: 4 million images, the scale the memory budget is set at.
const benchPhotos = 1_000_000

// photoWorkload generates what a volume's index sees: keys from a sequencer
// shared by many volumes (increasing, gaps of 1..1000, now and then a huge
// one) and four sizes per photo, appended together, of about 5 KB, 30 KB,
// 120 KB and 400 KB.
type photoWorkload struct {
	rng  *rand.Rand
	tail uint32 // next append offset, in 8-byte units
	// webp adds the four WebP variants (size codes 8..11) after the four
	// sizes of each photo, in the same batch: eight needles per photo.
	webp bool
}

func newPhotoWorkload(seed uint64) *photoWorkload {
	return &photoWorkload{rng: rand.New(rand.NewPCG(seed, seed+1)), tail: 8}
}

// keys returns n increasing keys. With outOfOrder > 0 that fraction of them
// is held back and comes a few photos late, below keys already written.
func (w *photoWorkload) keys(n int, outOfOrder float64) []uint64 {
	keys := make([]uint64, n)
	k := uint64(1)
	for i := range keys {
		gap := 1 + w.rng.Uint64N(1000)
		if w.rng.IntN(10000) == 0 {
			gap = 1_000_000 + w.rng.Uint64N(1_000_000_000)
		}
		k += gap
		keys[i] = k
	}
	if outOfOrder == 0 {
		return keys
	}
	// Hold some photos back: each is written 1..50 photos late.
	type late struct {
		key uint64
		due int
	}
	var held []late
	out := keys[:0:0]
	for i, k := range keys {
		if w.rng.Float64() < outOfOrder {
			held = append(held, late{k, i + 1 + w.rng.IntN(50)})
		} else {
			out = append(out, k)
		}
		kept := held[:0]
		for _, h := range held {
			if h.due <= i {
				out = append(out, h.key)
			} else {
				kept = append(kept, h)
			}
		}
		held = kept
	}
	for _, h := range held {
		out = append(out, h.key)
	}
	return out
}

var benchSizeBytes = [4]float64{5 << 10, 30 << 10, 120 << 10, 400 << 10}

// benchWebPRatio is the typical size of a WebP variant relative to its JPEG.
const benchWebPRatio = 0.7

// length returns the length in 8-byte units of a needle of size code size
// (0..3, or a WebP variant 8..11): the image (0.5x to 1.5x the size's
// typical bytes) plus the needle's 52 bytes of header and footer, padded.
func (w *photoWorkload) length(size uint32) uint32 {
	typical := benchSizeBytes[size&3]
	if size >= 8 {
		typical *= benchWebPRatio
	}
	n := uint32(typical * (0.5 + w.rng.Float64()))
	return (52 + n + 7) / 8
}

// photo appends the four sizes of key to ix.
func (w *photoWorkload) photo(ix *index, key uint64) {
	if w.rng.IntN(100) == 0 {
		w.tail += 7 // a tombstone in between
	}
	for size := range uint32(4) {
		l := w.length(size)
		ix.put(key, size, w.tail, l)
		w.tail += l
	}
	if w.webp {
		for size := uint32(8); size < 12; size++ {
			l := w.length(size)
			ix.put(key, size, w.tail, l)
			w.tail += l
		}
	}
}

// heapAlloc returns the live heap after a full collection.
func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// buildIndexes builds the indexes of benchPhotos photos with keys in the
// given order. With splitVolumes, a new index (a new volume) starts whenever
// the offsets of the current one would pass 32 GiB, as on a real store;
// otherwise offsets simply wrap. rewrites is the fraction of images written
// a second time (a random size of a recent photo).
func buildIndexes(w *photoWorkload, keys []uint64, rewrites float64, splitVolumes bool) []*index {
	ixs := []*index{newIndex()}
	written := 0
	for i, k := range keys {
		ix := ixs[len(ixs)-1]
		if splitVolumes && uint64(w.tail)+1<<20 > 1<<32 {
			ix = newIndex()
			ixs = append(ixs, ix)
			w.tail, written = 8, 0
		}
		w.photo(ix, k)
		written++
		if w.rng.Float64() < 4*rewrites {
			// A recent photo of this index.
			old := keys[i-w.rng.IntN(min(written, 10000))]
			size := w.rng.Uint32N(4)
			if w.webp && w.rng.IntN(2) == 0 {
				size += 8
			}
			l := w.length(size)
			ix.put(old, size, w.tail, l)
			w.tail += l
		}
	}
	return ixs
}

// BenchmarkIndexMemory reports the memory the index of 1,000,000 photos x
// 4 sizes (x 8 with their WebP variants, the "webp" cases) holds, per
// image: bytes/image is the growth of HeapAlloc after runtime.GC plus the
// touched part (whole 4 KiB pages) of the pages mapped outside the heap;
// heap-bytes/image is the heap part alone. memoryBytes/image is what the
// index itself estimates.
func BenchmarkIndexMemory(b *testing.B) {
	cases := []struct {
		name       string
		outOfOrder float64
		rewrites   float64
		split      bool
		shuffle    bool
		webp       bool
		// deleteEvery deletes every n-th photo (one tombstone for all its
		// sizes); bytes/image then counts the deleted images too.
		deleteEvery int
	}{
		{name: "in-order"},
		{name: "in-order-32GiB-volumes", split: true},
		{name: "ooo5-rewrite2", outOfOrder: 0.05, rewrites: 0.02},
		{name: "shuffled", shuffle: true},
		{name: "webp-in-order", webp: true},
		{name: "webp-in-order-32GiB-volumes", split: true, webp: true},
		{name: "webp-ooo5-rewrite2", outOfOrder: 0.05, rewrites: 0.02, webp: true},
		{name: "in-order-quarter-deleted", deleteEvery: 4},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				w := newPhotoWorkload(1)
				w.webp = tc.webp
				keys := w.keys(benchPhotos, tc.outOfOrder)
				if tc.shuffle {
					w.rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
				}
				before := heapAlloc()
				ixs := buildIndexes(w, keys, tc.rewrites, tc.split)
				deleted := 0
				if tc.deleteEvery > 0 {
					// Deletes come in any order: every n-th photo, from
					// a shuffled list.
					doomed := make([]uint64, 0, len(keys)/tc.deleteEvery+1)
					for i := 0; i < len(keys); i += tc.deleteEvery {
						doomed = append(doomed, keys[i])
					}
					w.rng.Shuffle(len(doomed), func(i, j int) { doomed[i], doomed[j] = doomed[j], doomed[i] })
					for _, k := range doomed {
						ixs[0].apply(idxEntry{key: k, size: allSizes, off: w.tail, length: 7, tombstone: true})
						w.tail += 7
					}
					deleted = 4 * len(doomed)
				}
				after := heapAlloc()
				runtime.KeepAlive(keys)
				images, est, exc, mapped := deleted, 0, 0, 0
				for _, ix := range ixs {
					images += ix.len()
					est += ix.memoryBytes()
					exc += ix.exc.Len()
					for ln := range ix.lanes {
						mapped += ix.lanes[ln].pageBytes()
					}
					mapped += (len(ix.tombs.sorted) + osPage - 1) / osPage * osPage
				}
				heap := float64(after) - float64(before)
				b.ReportMetric((heap+float64(mapped))/float64(images), "bytes/image")
				b.ReportMetric(heap/float64(images), "heap-bytes/image")
				b.ReportMetric(float64(est)/float64(images), "memoryBytes/image")
				b.ReportMetric(float64(exc), "exceptions")
				b.ReportMetric(float64(len(ixs)), "indexes")
				runtime.KeepAlive(ixs)
				for _, ix := range ixs {
					ix.release()
				}
			}
		})
	}
}

// lookupIndex is the index BenchmarkIndexLookup reads, built once.
type lookupIndex struct {
	ix   *index
	keys []uint64
}

var lookupIndexes = map[string]func() lookupIndex{
	"in-order":      sync.OnceValue(func() lookupIndex { return buildLookupIndex(0, 0) }),
	"ooo5-rewrite2": sync.OnceValue(func() lookupIndex { return buildLookupIndex(0.05, 0.02) }),
}

func buildLookupIndex(outOfOrder, rewrites float64) lookupIndex {
	w := newPhotoWorkload(2)
	keys := w.keys(benchPhotos, outOfOrder)
	return lookupIndex{ix: buildIndexes(w, keys, rewrites, false)[0], keys: keys}
}

// BenchmarkIndexLookup measures get of random present images of the
// 4-million-image index.
func BenchmarkIndexLookup(b *testing.B) {
	for _, name := range []string{"in-order", "ooo5-rewrite2"} {
		b.Run(name, func(b *testing.B) {
			li := lookupIndexes[name]()
			rng := rand.New(rand.NewPCG(3, 4))
			const probes = 1 << 16
			keys := make([]uint64, probes)
			for i := range keys {
				keys[i] = li.keys[rng.IntN(len(li.keys))]
			}
			misses := 0
			i := 0
			for b.Loop() {
				if _, _, ok := li.ix.get(keys[i&(probes-1)], uint32(i&3)); !ok {
					misses++
				}
				i++
			}
			if misses > 0 {
				b.Fatalf("%d lookups of present images missed", misses)
			}
		})
	}
}

// BenchmarkIndexPut measures put of images appended in order, four sizes per
// photo.
func BenchmarkIndexPut(b *testing.B) {
	w := newPhotoWorkload(5)
	ix := newIndex()
	key := uint64(1)
	var lens [4]uint32
	for i := range lens {
		lens[i] = w.length(uint32(i))
	}
	i := 0
	for b.Loop() {
		size := uint32(i & 3)
		if size == 0 {
			key += 1 + uint64(i&511)
		}
		ix.put(key, size, w.tail, lens[size])
		w.tail += lens[size]
		i++
	}
	b.ReportMetric(float64(ix.memoryBytes())/float64(max(1, ix.len())), "memoryBytes/image")
}
