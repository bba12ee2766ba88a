package volume

import (
	"sync"
	"sync/atomic"
)

// Buffers of direct reads.
//
// A direct read transfers straight into the reading process's memory, one
// scatter-gather segment per physically contiguous piece of it: into an
// ordinary buffer, one segment per 4 KiB page. Devices whose cost goes by
// the segment (a virtual disk copying each segment apart) then serve a
// 140 KiB needle far slower than the page cache's read of it into its
// large folios: on the benchmark VM, 16 readers of 144 KiB ranges made
// 2,500 direct reads/s into ordinary buffers, 4,100 buffered reads/s, and
// 10,000 direct reads/s into buffers inside 2 MiB transparent huge pages
// (bench/RESULTS.md, "Direct reads of cold needles"). So DirectReads keeps
// a small pool of buffers carved from huge pages (madvise MADV_HUGEPAGE;
// taken lazily, never more than DirectBufferBytes for the whole store): a
// needle's rounded range up to directSlot bytes is read into one, then
// copied into the caller's buffer (a copy from memory the read just
// brought into the CPU's cache, as the page cache's read copies). A
// larger range, or a read while every buffer is taken, reads into the
// caller's buffer aligned, as before; where the system gives no huge page
// the pool's buffers are ordinary pages, as fast as the caller's.
//
// ReadRef does not copy: it verifies the needle in the buffer it was read
// into and lends that buffer to the Ref it returns, whose Data aliases it
// until Release gives it back (the copy was a tenth of a cold image's CPU,
// bench/RESULTS.md). At most half the pool's buffers are lent at a time:
// past that (answers held by slow clients), ReadRef copies out as Read
// does, so reads still find buffers to read into.

// directSlot is the size of one buffer of the pool: reads of a rounded
// range up to it use the pool.
const directSlot = 512 << 10

// directSlab is the size of the regions the pool maps, one huge page.
const directSlab = 2 << 20

// DirectBufferBytes bounds the memory of the pool of direct-read buffers
// of one DirectReads: 32 buffers of 512 KiB, 16 MiB, taken as reads need
// them.
const DirectBufferBytes = 16 << 20

// directBufs is the pool of direct-read buffers. Its regions are mapped
// outside the Go heap and unmapped when the DirectReads that owns it is
// collected (no read can hold a buffer then: a read holds the
// DirectReads through its volume's options).
type directBufs struct {
	mu       sync.Mutex
	free     [][]byte
	slabs    [][]byte
	maxSlabs int

	lent    atomic.Int32 // buffers lent to Refs (see lend)
	maxLent int32
}

// newDirectBufs returns a pool of at most DirectBufferBytes, of which at
// most half may be lent to Refs at a time.
func newDirectBufs() *directBufs {
	return &directBufs{maxSlabs: DirectBufferBytes / directSlab, maxLent: DirectBufferBytes / directSlot / 2}
}

// get returns a free buffer of directSlot bytes, mapping another region
// if none is free and the bound allows; nil when none can be had.
func (p *directBufs) get() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b
	}
	if len(p.slabs) >= p.maxSlabs {
		return nil
	}
	slab, err := mapSlab()
	if err != nil || slab == nil {
		p.maxSlabs = len(p.slabs) // no more regions to be had
		return nil
	}
	p.slabs = append(p.slabs, slab)
	for i := directSlab/directSlot - 1; i > 0; i-- {
		p.free = append(p.free, slab[i*directSlot:(i+1)*directSlot:(i+1)*directSlot])
	}
	return slab[:directSlot:directSlot]
}

// put returns a buffer get gave.
func (p *directBufs) put(b []byte) {
	p.mu.Lock()
	p.free = append(p.free, b)
	p.mu.Unlock()
}

// lend reports whether a buffer get gave may be lent to a Ref, which then
// gives it back with giveBack, and counts it lent if so: false once
// maxLent buffers are lent.
func (p *directBufs) lend() bool {
	for {
		n := p.lent.Load()
		if n >= p.maxLent {
			return false
		}
		if p.lent.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// giveBack returns a buffer that was lent.
func (p *directBufs) giveBack(b []byte) {
	p.put(b)
	p.lent.Add(-1)
}

// unmapAll unmaps every region; nothing may use the pool after it.
func (p *directBufs) unmapAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.slabs {
		unmapSlab(s)
	}
	p.slabs, p.free = nil, nil
}
