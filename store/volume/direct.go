package volume

import (
	"io"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// Direct reads of cold needles.
//
// A needle that is not wholly in the page cache costs a disk read however
// it is read. Read buffered, the kernel also allocates page-cache pages for
// it, submits the read into them and copies them into the caller's buffer;
// and the pages stay, pushing out others: on a store whose data is far
// larger than its memory, one-off reads of cold needles churn the page
// cache. With Options.Direct, ReadRef reads such a needle from a second
// descriptor of the .dat opened with O_DIRECT (vfs.OpenDirect): the range
// rounded out to vfs.DirectAlign (the same pages a buffered read touches)
// goes from the device straight into an aligned buffer, in one read, and
// the page cache is left as it was.
//
// Only needles of MapMin bytes or more are read direct: whether they are
// cold is the answer ReadRef already has (mincore(2) on the volume's
// mapping, or the verified mapping's presence). Asking it of a smaller
// needle would cost every read of it one more system call, warm reads
// included (about a microsecond, 3% of a warm thumbnail's CPU), for a
// needle whose buffered read copies little and takes little of the page
// cache; small needles are read buffered, resident or not. Nor can the
// read answer it by itself: preadv2(RWF_NOWAIT) on the buffered
// descriptor starts reading the missing pages into the page cache before
// it answers EAGAIN (or a short read), so a direct read after it would be
// a second disk read of the same pages.
//
// A needle partly in the page cache is read direct as a whole: still one
// read of the device. Direct reads see every byte written: the kernel
// writes back dirty pages of the range before it reads (only a page shared
// with a needle being appended can be dirty: a needle is indexed once it is
// durable), and a needle recently written is normally still resident, so
// it is read from the page cache anyway.
//
// The policy keeps hot needles in memory: DirectReads remembers the
// needles it sent direct in a table of a fixed size, and a needle read cold
// again while it is still remembered is read buffered, so its pages stay
// in the page cache for the reads after it (a hot image that was evicted
// comes back after its second miss).

// DefaultDirectWindow is the number of slots NewDirectReads uses when asked
// for none: 64Ki slots of 4 bytes, 256 KiB for the whole store.
const DefaultDirectWindow = 1 << 16

// DirectReads is the policy of the volumes that read cold needles direct
// (see Options.Direct): a table of fingerprints of the needles recently
// read direct, of a size fixed when it is made, and the pool of buffers
// the reads go through (at most DirectBufferBytes, mapped as reads need
// them; see directbuf.go). It holds no pointer to any volume and costs no
// memory per image. One DirectReads may serve many volumes, concurrently.
type DirectReads struct {
	seen []atomic.Uint32 // fingerprint (never 0) of the needle last sent direct in the slot, or 0
	mask uint64
	bufs *directBufs // buffers to read into (see directbuf.go)
}

// NewDirectReads returns a policy whose window is slots needles (rounded up
// to a power of two; DefaultDirectWindow when slots <= 0): a needle read
// cold again before about that many other cold reads have passed is read
// buffered, and then stays in the page cache.
func NewDirectReads(slots int) *DirectReads {
	if slots <= 0 {
		slots = DefaultDirectWindow
	}
	n := 1
	for n < slots {
		n <<= 1
	}
	d := &DirectReads{seen: make([]atomic.Uint32, n), mask: uint64(n - 1), bufs: newDirectBufs()}
	runtime.AddCleanup(d, (*directBufs).unmapAll, d.bufs)
	return d
}

// Window returns the number of slots of the table.
func (d *DirectReads) Window() int { return len(d.seen) }

// Lent returns how many buffers of the pool are lent now to Refs of cold
// needles read direct (see Ref.Lent): answers being written from them, or
// Refs not yet released.
func (d *DirectReads) Lent() int { return int(d.bufs.lent.Load()) }

// direct reports whether the cold needle (vid, key, size) is read direct:
// true the first time, and remembered; false when it was read direct
// within the window, and forgotten (the buffered read keeps it resident).
func (d *DirectReads) direct(vid uint32, key uint64, size needle.SizeCode) bool {
	h := mix(key ^ uint64(vid)<<40 ^ uint64(size)<<32)
	slot := &d.seen[h&d.mask]
	fp := uint32(h>>32) | 1
	if slot.Load() == fp {
		slot.CompareAndSwap(fp, 0)
		return false
	}
	slot.Store(fp)
	return true
}

// lendTo lends ref the pool's buffer slot its needle was read and
// verified in, or, when the read or its verification failed (err), takes
// the buffer back. A nil slot (the needle was copied out, or read into
// the caller's buffer) does nothing.
func (d *DirectReads) lendTo(ref *Ref, slot []byte, err error) {
	switch {
	case slot == nil:
	case err != nil:
		d.bufs.giveBack(slot)
	default:
		ref.slot, ref.direct = slot, d
	}
}

// undo takes back a call of direct for (vid, key, size) that answered
// was, for a read that was not made after all (an event loop's read its
// ring did not take, or that came back refused or short): the read made
// instead asks direct again and gets the same answer, so that giving up
// on one read does not turn the policy's choice around. A slot another
// needle has taken since is left to it.
func (d *DirectReads) undo(vid uint32, key uint64, size needle.SizeCode, was bool) {
	h := mix(key ^ uint64(vid)<<40 ^ uint64(size)<<32)
	slot := &d.seen[h&d.mask]
	fp := uint32(h>>32) | 1
	if was {
		slot.CompareAndSwap(fp, 0)
	} else {
		slot.CompareAndSwap(0, fp)
	}
}

// mix is the finaliser of SplitMix64: every bit of x moves every bit of
// the result.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// directBuffer returns a buffer holding span bytes from an address aligned
// to vfs.DirectAlign, and the offset of that address in it: buf itself
// when it has the room (a caller's pooled buffer is reused, wherever its
// aligned address falls), otherwise a new one of a capacity rounded up to
// ReadBufferClass, as readBuffer allocates.
func directBuffer(buf []byte, span int) ([]byte, int) {
	if c := cap(buf); c > 0 {
		b := buf[:c]
		at := alignGap(b)
		if at+span <= c {
			return b[:at+span], at
		}
	}
	for extra := 0; ; extra = vfs.DirectAlign {
		n := span + extra
		b := make([]byte, n, (n+ReadBufferClass-1)/ReadBufferClass*ReadBufferClass)
		b = b[:cap(b)]
		if at := alignGap(b); at+span <= len(b) {
			return b[:at+span], at
		}
	}
}

// alignGap is how many bytes from the start of b (not empty) the first
// address aligned to vfs.DirectAlign lies.
func alignGap(b []byte) int { return alignTo(b, vfs.DirectAlign) }

// alignTo is how many bytes from the start of b (not empty) the first
// address aligned to align (a power of two) lies.
func alignTo(b []byte, align int) int {
	return int(-uintptr(unsafe.Pointer(unsafe.SliceData(b))) & uintptr(align-1))
}

// readDirectLocked reads the needle at off (8-byte units) from d, the
// current .dat opened by vfs.OpenDirect, with one read of its range
// rounded out to vfs.DirectAlign, into a buffer of the policy's pool when
// one is free and large enough, else straight into buf (see
// directBuffer). Read into the pool's buffer, the needle is decoded where
// it lies and that buffer returned as slot, lent (the caller hands it to
// the Ref or gives it back with giveBack on every path) when lend is true
// and the pool lends it; otherwise the needle is copied into buf (grown
// when too small, as by Read) and slot is nil. The needle's Data aliases
// slot or the returned buffer. The caller holds v.mu shared.
func (v *Volume) readDirectLocked(d vfs.File, off, length uint32, buf []byte, lend bool) (nd needle.Needle, out, slot []byte, err error) {
	start, size := int64(off)*needle.Alignment, int(length)*needle.Alignment
	pool := v.opts.Direct.bufs
	lo, head, b, slot, buf := directSpan(pool, start, size, buf)
	got, err := d.ReadAt(b, lo)
	if err = shortDirectRead(got-head, size, start, err); err != nil {
		if slot != nil {
			pool.put(slot)
		}
		return needle.Needle{}, buf, nil, err
	}
	switch {
	case slot == nil:
		nd, err = v.format.Decode(b[head : head+size : head+size])
		return nd, buf, nil, err
	case lend && pool.lend():
		nd, err = v.format.Decode(b[head : head+size : head+size])
		return nd, buf, slot, err
	}
	buf = readBuffer(buf, size)
	copy(buf, b[head:head+size])
	pool.put(slot)
	nd, err = v.format.Decode(buf)
	return nd, buf, nil, err
}

// directSpan plans a read with O_DIRECT of the n bytes at off: their
// range rounded out to vfs.DirectAlign, read at lo into b, the bytes
// wanted at b[head:head+n]. b is a buffer of pool, returned as slot too
// (to put back, lend or give back), when one is free and large enough;
// else it lies in buf, grown to hold it from an aligned address (see
// directBuffer) and returned as out (buf itself with a slot).
func directSpan(pool *directBufs, off int64, n int, buf []byte) (lo int64, head int, b, slot, out []byte) {
	const align = vfs.DirectAlign
	lo = off &^ (align - 1)
	hi := (off + int64(n) + align - 1) &^ (align - 1)
	head = int(off - lo)
	if hi-lo <= directSlot {
		slot = pool.get()
	}
	if slot != nil {
		return lo, head, slot[:hi-lo], slot, buf
	}
	out, at := directBuffer(buf, int(hi-lo))
	return lo, head, out[at:], nil, out
}

// shortDirectRead is the error of a direct read that brought got bytes of
// the needle of size bytes at start: nil when it brought them all. A range
// running past the end of the file is read to the end (io.EOF), so a read
// is short only when the file is shorter than the index says: corruption.
func shortDirectRead(got, size int, start int64, err error) error {
	if got >= size {
		return nil
	}
	if err == nil || err == io.EOF {
		return needle.Corruptf("needle at %d: read %d of %d bytes", start, max(got, 0), size)
	}
	return err
}
