package cache

import (
	"math/bits"
	"sync"
	"sync/atomic"
)

// Large entries in a memfd.
//
// An image of at least Options.MemfdMin bytes is kept, once admitted, in
// one memfd_create(2) file per cache rather than in Go memory: the file is
// mapped read/write once over a fixed virtual extent, and only the pages
// written use memory (they are the process's own shared memory, counted in
// its RSS). The entry's data slice points into the mapping, so the
// net/http path (Range, conditional requests) reads it as any other entry,
// and the fast hit path sends it from the file with sendfile(2) (see
// sendfile_linux.go), as nginx sends a file from the page cache.
//
// Slots. Each image gets one page-aligned slot of a power-of-two size
// class (a page up to 2^30 bytes): from the class's free list, else bumped
// from the extent, else from the free list of a larger class (the slot
// keeps that class; the file is sparse, so the larger slot costs virtual
// space only). No two images share a page. When the extent has no slot
// left, the image stays in Go memory.
//
// Reuse. Pages that sendfile handed to a socket may still sit in its send
// queue after sendfile returned, referenced, not copied. So no new byte is
// ever written into a page of a freed slot: before a slot goes back to a
// free list its range is hole-punched (fallocate PUNCH_HOLE|KEEP_SIZE),
// which drops the pages from the file (a socket that holds one keeps it,
// with its old contents), and the next image written there gets fresh
// zeroed pages. The mapping asks for base pages only (MADV_NOHUGEPAGE; no
// memfd where the system forces huge shmem pages): punching part of a
// huge page that a socket still holds would zero it in place.
//
// Lifetime. A slot is reference-counted. The cache holds one reference
// for each otter entry that points at it (the image's own entry, and the
// entry of a WebP variant the photo lacks, which shares the size's bytes);
// otter's deletion callback drops it. Every answer takes one, with a CAS
// that succeeds only while the count is above zero (a failure means the
// entry was just evicted: the answer treats it as a miss), and drops it
// when its answer is written: after the net/http handler returned (which
// copies), or when fasthttp closes the body stream that sent the bytes
// (or resets the request whose body they were). The last drop punches the
// hole and frees the slot. A slot struct is never reused: a stale entry
// pointer finds a count of zero forever, never a newer image.

// DefaultMemfdMin is the default of Options.MemfdMin: the smallest image
// kept in the memfd and sent with sendfile.
const DefaultMemfdMin = 64 << 10

// maxSlotShift bounds the slot classes: the largest slot is 1 GiB.
const maxSlotShift = 30

// arena is a cache's memfd and its slot allocator. Its methods are safe
// for concurrent use.
type arena struct {
	mem       []byte // the mapping of the whole extent
	fd        int    // the memfd, for sendfile
	min       int    // the smallest image kept here
	pageShift uint
	// punch drops the pages of [off, off+n) from the file.
	punch func(off, n int64) error

	mu struct {
		sync.Mutex
		free [maxSlotShift + 1][]int64 // offsets of free slots, by class
		next int64                     // the extent's first never-used byte
	}

	live      atomic.Int64  // slots allocated and not yet freed
	cached    atomic.Int64  // live slots that an otter entry points at
	bytes     atomic.Int64  // pages of live slots, in bytes
	noSlot    atomic.Uint64 // images left in Go memory: no slot was free
	punchFail atomic.Uint64 // slots never reused: their hole punch failed
}

// slot is one image's place in the arena.
type slot struct {
	a     *arena
	off   int64
	n     int   // the image's length
	class uint8 // the slot is a.page << class bytes
	refs  atomic.Int32
	held  atomic.Int32 // otter entries pointing at the slot
}

// classOf returns the smallest class whose slots hold n bytes, or false
// when n is over the largest slot.
func (a *arena) classOf(n int) (uint8, bool) {
	pages := (n + 1<<a.pageShift - 1) >> a.pageShift
	c := bits.Len(uint(max(pages, 1) - 1))
	if c+int(a.pageShift) > maxSlotShift {
		return 0, false
	}
	return uint8(c), true
}

// store copies data into a new slot and returns it holding one reference
// (the caller's), or nil when no slot is free.
func (a *arena) store(data []byte) *slot {
	class, ok := a.classOf(len(data))
	if !ok {
		a.noSlot.Add(1)
		return nil
	}
	off, got, ok := a.alloc(class)
	if !ok {
		a.noSlot.Add(1)
		return nil
	}
	s := &slot{a: a, off: off, n: len(data), class: got}
	s.refs.Store(1)
	copy(a.mem[off:off+int64(len(data))], data)
	a.live.Add(1)
	a.bytes.Add(a.pages(len(data)))
	return s
}

// pages returns n rounded up to whole pages.
func (a *arena) pages(n int) int64 {
	page := int64(1) << a.pageShift
	return (int64(n) + page - 1) &^ (page - 1)
}

// alloc takes a slot of class, or of a larger one when the extent is
// used up, and returns its offset and class.
func (a *arena) alloc(class uint8) (off int64, got uint8, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if l := a.mu.free[class]; len(l) > 0 {
		a.mu.free[class] = l[:len(l)-1]
		return l[len(l)-1], class, true
	}
	size := int64(1) << (uint(class) + a.pageShift)
	if a.mu.next+size <= int64(len(a.mem)) {
		off = a.mu.next
		a.mu.next += size
		return off, class, true
	}
	for c := int(class) + 1; c < len(a.mu.free); c++ {
		if l := a.mu.free[c]; len(l) > 0 {
			a.mu.free[c] = l[:len(l)-1]
			return l[len(l)-1], uint8(c), true
		}
	}
	return 0, 0, false
}

// free punches s's pages out of the file and makes its slot reusable.
// A slot whose punch failed is never reused: its old pages may still be
// in a socket's send queue.
func (a *arena) free(s *slot) {
	a.live.Add(-1)
	a.bytes.Add(-a.pages(s.n))
	if err := a.punch(s.off, a.pages(s.n)); err != nil {
		a.punchFail.Add(1)
		return
	}
	a.mu.Lock()
	a.mu.free[s.class] = append(a.mu.free[s.class], s.off)
	a.mu.Unlock()
}

// data returns the slot's image, a slice of the mapping.
func (s *slot) data() []byte {
	return s.a.mem[s.off : s.off+int64(s.n) : s.off+int64(s.n)]
}

// acquire takes a reference unless the count already dropped to zero (the
// slot is freed or being freed), and reports whether it did.
func (s *slot) acquire() bool {
	for {
		n := s.refs.Load()
		if n <= 0 {
			return false
		}
		if s.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release drops a reference; the last one frees the slot.
func (s *slot) release() {
	if s.refs.Add(-1) == 0 {
		s.a.free(s)
	}
}

// hold records that an otter entry points at s; the entry's reference is
// one the caller already holds.
func (s *slot) hold() {
	if s.held.Add(1) == 1 {
		s.a.cached.Add(1)
	}
}

// drop is the end of an otter entry that pointed at s: it forgets the
// entry and drops its reference.
func (s *slot) drop() {
	if s.held.Add(-1) == 0 {
		s.a.cached.Add(-1)
	}
	s.release()
}

// slotRelease is a slot as the io.Closer of a fasthttp request's user
// value: closing it, when the request is reset after its answer was
// written, drops the answer's reference.
type slotRelease slot

// Close drops the reference.
func (r *slotRelease) Close() error {
	(*slot)(r).release()
	return nil
}
