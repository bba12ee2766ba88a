package volume

import (
	"runtime"
	"sync/atomic"
)

// Index memory outside the Go heap.
//
// The packed records of the index and the sorted tombstones are large,
// long-lived arrays of plain bytes that hold no pointers. Kept on the Go
// heap they cost twice their size in RSS: the collector lets the heap grow
// to GOGC percent above the live heap before it collects, and the index is
// almost all of a store's live heap. They are therefore mapped as anonymous
// memory (mmap on Unix), which the collector never scans nor counts, and
// which the kernel backs page by page as records are written: a mapping
// costs RSS only for the 4 KiB pages it has touched.
//
// Every mapping belongs to one offHeap. Its owner (a lane, a tombstone set)
// frees it explicitly when the volume closes, when compaction swaps in a
// new index, or when a merge replaces the arrays; as a safety net, an
// offHeap that becomes unreachable without being freed (an index dropped
// by an error path, an EC volume's index after its volume is closed) is
// freed by a runtime cleanup. All use of an offHeap's memory is under the
// volume's lock, and free runs under its write lock, so no read can see
// memory after it is unmapped.

// indexMapped counts the bytes mapped by every live offHeap of the process.
var indexMapped atomic.Int64

// IndexMappedBytes returns the bytes of memory the volume indexes of this
// process hold outside the Go heap (mapped; resident only where written).
func IndexMappedBytes() int64 { return indexMapped.Load() }

// offHeap owns a set of mappings.
type offHeap struct {
	m       *mappings
	cleanup runtime.Cleanup
}

// mappings is what an offHeap's cleanup frees; it is a separate object so
// that the cleanup does not keep the offHeap reachable.
type mappings struct {
	blocks [][]byte
}

func newOffHeap() *offHeap {
	h := &offHeap{m: &mappings{}}
	h.cleanup = runtime.AddCleanup(h, (*mappings).free, h.m)
	return h
}

// alloc returns n zeroed bytes, mapped outside the Go heap when the system
// allows it and from the heap otherwise (the memory is then the
// collector's, and free only forgets it).
func (h *offHeap) alloc(n int) []byte {
	if n <= 0 {
		return nil
	}
	b, mapped := mapAnon(n)
	if !mapped {
		b = make([]byte, n)
	}
	h.m.blocks = append(h.m.blocks, b)
	if mapped {
		indexMapped.Add(int64(cap(b)))
	}
	return b
}

// release frees one block returned by alloc. b must be that block (the
// same first byte); other slices of it must no longer be used.
func (h *offHeap) release(b []byte) {
	if cap(b) == 0 {
		return
	}
	first := &b[:1][0]
	for i, blk := range h.m.blocks {
		if &blk[:1][0] == first {
			freeBlock(blk)
			last := len(h.m.blocks) - 1
			h.m.blocks[i] = h.m.blocks[last]
			h.m.blocks[last] = nil
			h.m.blocks = h.m.blocks[:last]
			return
		}
	}
}

// free releases every block; the offHeap must not be used afterwards
// except to allocate anew.
func (h *offHeap) free() {
	if h == nil {
		return
	}
	h.cleanup.Stop()
	h.m.free()
}

func (m *mappings) free() {
	for i, b := range m.blocks {
		freeBlock(b)
		m.blocks[i] = nil
	}
	m.blocks = nil
}

// freeBlock unmaps a block that mapAnon mapped; a heap block is left to
// the collector.
func freeBlock(b []byte) {
	if unmapAnon(b) {
		indexMapped.Add(-int64(cap(b)))
	}
}
