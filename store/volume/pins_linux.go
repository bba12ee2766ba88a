package volume

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/needle"
)

// Verified mappings.
//
// ReadRef verifies a large needle in the page cache by hashing it where it
// lies; for a 400 KB image that hash costs more than everything else the
// store does to answer it. A needle of a few tens of KB read with a pread
// costs a copy into the process and a hash, where nginx sends the file
// with no copy at all. The checksum is there to catch what the disk
// gives back wrong, and a page the disk has not given back since the
// needle was verified cannot have changed. Pins keeps, for each needle of
// PinMin bytes or more verified, a small read-only mapping of its own of just that
// needle's pages (its "verified mapping"), and answers a later read of the
// needle without hashing when every page of that mapping is still present
// in the process's page tables.
//
// Why a present page is a verified page. A page of the page cache that is
// mapped into a process cannot leave the page cache, be read again from
// the disk, or be replaced by another page without first being unmapped
// from every process that maps it: reclaim, truncation, hole punching and
// invalidation all unmap a page before they drop it, and migration copies
// its bytes to the new page (the mapping is briefly a migration entry,
// which /proc/self/pagemap reports as not present). A page once unmapped
// comes back into a mapping only through a fault on that mapping. The
// verified mapping of a needle is touched by nothing but the needle's own
// verification: the answer is sent from the volume file (sendfile) or
// written from the volume's big mapping (datMap), never from the verified
// mapping, and no neighbour's verification reaches it (each needle has a
// mapping of its own). So when /proc/self/pagemap says that every page of
// the verified mapping is present, each of them is the very page the last
// verification hashed, and the page cache serves those bytes to sendfile
// and to the big mapping. When any page is missing, the page may have been
// dropped and read again from the disk since (for this needle or for a
// neighbour sharing the page): the needle is verified again, through its
// verified mapping when all of it is in the page cache, or with one pread
// (as without verified mappings) otherwise, and the stale mapping dropped.
//
// The limits. This guards against the disk, not against a process that
// writes into the volume file through the page cache (write(2) or a
// writable shared mapping change a page in place, mapped or not). The
// store itself never does: a .dat is append-only, a needle is never
// rewritten, and compaction writes a new file and swaps it in (the swap
// drops every verified mapping of the old file).
//
// What the proof does not cover. A Ref's proof (Ref.StillVerified) is
// asked before a send, not after it: a page reclaimed and read again from
// the disk between the question and the kernel's read of that page for
// the send (the time of one system call: sendfile, or a write from the
// file's mapping) goes out unproven. CopyOut has no such window: it copies
// first and proves after, and a page present after the copy never left.
// During a verification, a fault on the verified mapping maps the pages
// around it that are in the page cache (fault-around, up to 64 KiB within
// the mapping; MADV_RANDOM does not turn it off): a page the hash has
// already passed, reclaimed and read again from the disk in the meantime,
// can be mapped again by a later fault of the same verification without
// being hashed again, and is then taken as verified. Both windows need
// reclaim of a page and a disk read of it within a few microseconds,
// while it is being used; neither is closed.
//
// Each verified mapping takes two mappings (VMAs) of the process, its own
// and a guard page's that keeps it apart from the next (see mapNeedle);
// the kernel allows vm.max_map_count of them (65530 by default) and the Go
// runtime uses some, failing fatally when it cannot map. Pins caches at
// most its bound and evicts with CLOCK; a mapping being checked, verified
// or answered from (a Ref holds it) is held, and eviction passes over it.
// A mapping that could not go into the cache (every cached one held, or
// another read cached the needle's first) and one dropped from it while
// held stay mapped until their last holder is done, out of the cache; so
// Pins also caps the mappings that exist at once, cached or not, at its
// bound and an eighth (liveCap): a read that finds them at the cap
// reads the needle with one pread, as without verified mappings, and
// NewPins checks vm.max_map_count against that cap. The pages of a
// verified mapping that are present count in the process's file-backed
// RSS (RssFile) while it is mapped: at most the cap times the largest
// needle, page cache the kernel shares with every reader of the file, not
// memory of the process's own.

// DefaultVerifiedMappings is the store's default bound on cached verified
// mappings: with the eighth more that answers may hold out of the cache
// (liveCap), at most 15,750 verified mappings exist at once, 31,500
// mappings (VMAs), under half of the kernel's default vm.max_map_count
// (65530), which leaves the rest to the Go runtime and the volumes' own
// mappings.
const DefaultVerifiedMappings = 14000

// Pins keeps the verified mappings of the needles of PinMin bytes or more of every volume
// opened with it (Options.Pins), up to a bound shared by all of them. It is
// safe for concurrent use.
type Pins struct {
	max     int
	liveMax int // liveCap(max)
	page    int64

	mu struct {
		sync.Mutex
		byKey map[pinKey]*pin
		ring  []*pin // the CLOCK ring; nil slots are free
		hand  int
		// held counts the cached mappings (those of byKey) with
		// holders: when it is max, insert gives up without a scan.
		held int
	}

	hits       atomic.Int64
	reverified atomic.Int64
	evicted    atomic.Int64
	dropped    atomic.Int64
	live       atomic.Int64
}

// pinKey names a needle of one generation of a volume's file: the mapping
// of that generation (a compaction maps a new one) and the needle's offset.
type pinKey struct {
	m   *datMap
	off int64
}

// pin is a verified mapping: the needle's pages, mapped read-only from the
// datMap's descriptor, and the needle's decoded header fields.
type pin struct {
	key  pinKey
	base unsafe.Pointer // the guard page, then the mapping (see mapNeedle)
	span uintptr        // of both
	data []byte         // the mapping, from the page holding the needle's start
	skip int            // where the needle starts in data
	n    int            // the needle's length, padded, as the index says
	hdr  needle.Needle  // its decoded fields; Data is nil
	// dataLen is the length of the needle's data.
	dataLen int

	// seq is even while the pages of the mapping that are present are
	// those the last verification hashed, odd while a read verifies it
	// again (taking it with a compare-and-swap from even).
	seq atomic.Uint64

	// Guarded by Pins.mu.
	holders int
	used    bool // the CLOCK reference bit
	dead    bool // out of the cache; unmapped when holders reaches 0
	slot    int
}

// PinStats are the counters of a Pins.
type PinStats struct {
	// Hits counts reads answered from a verified mapping whose pages were
	// all present, without hashing.
	Hits int64
	// Reverified counts reads that found a page of the verified mapping
	// missing and verified the needle again through it.
	Reverified int64
	// Evicted counts verified mappings evicted to respect the bound.
	Evicted int64
	// Dropped counts verified mappings dropped because their pages had
	// left the page cache (the read was a pread), failed verification, or
	// belonged to a file that was swapped out by a compaction or closed.
	Dropped int64
	// Cached is the number of verified mappings cached now (at most the
	// bound); Live the number mapped now: Cached, those out of the cache
	// that a read or an answer still holds (kept out of a cache whose every
	// mapping was held, or dropped from it while held), and those being
	// made. Live never exceeds the bound and an eighth (see liveCap).
	Cached int
	Live   int64
}

// liveCap returns how many verified mappings may exist at once, cached or
// not, for a cache of max: max and an eighth more (at least one more).
// The eighth is room for the answers that hold a mapping out of the cache
// (see Pins.insert): with a cache full of held mappings, that many more
// answers of distinct needles are still sent from the page cache before
// reads fall back to one pread each, for 12.5% more mappings of the
// process than the bound alone. At least one more, so that a small cache
// full of mappings nobody holds can still map a needle and evict one.
func liveCap(bound int) int {
	return bound + max(1, bound/8)
}

// NewPins returns a cache of at most max verified mappings, of which at
// most liveCap(max) exist at once, cached or held out of the cache. It
// fails when max is not positive, when the two mappings each of those
// takes (see mapNeedle) are more than half the kernel's
// vm.max_map_count (the process needs mappings of its own), or when
// /proc/self/pagemap cannot say which pages are present.
func NewPins(max int) (*Pins, error) {
	if max <= 0 {
		return nil, fmt.Errorf("volume: %d verified mappings: want at least 1", max)
	}
	live := liveCap(max)
	if b, err := os.ReadFile("/proc/sys/vm/max_map_count"); err == nil {
		// Each takes two mappings: its own and its guard page's.
		if limit, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && 2*live > limit/2 {
			return nil, fmt.Errorf("volume: %d verified mappings (up to %d at once with those answers hold, two mappings each) is more than half of vm.max_map_count (%d)", max, live, limit)
		}
	}
	if err := openPagemap(); err != nil {
		return nil, fmt.Errorf("volume: verified mappings: %w", err)
	}
	ps := &Pins{max: max, liveMax: live, page: int64(os.Getpagesize())}
	ps.mu.byKey = make(map[pinKey]*pin)
	return ps, nil
}

// Stats returns the cache's counters.
func (ps *Pins) Stats() PinStats {
	if ps == nil {
		return PinStats{}
	}
	ps.mu.Lock()
	cached := len(ps.mu.byKey)
	ps.mu.Unlock()
	return PinStats{
		Hits:       ps.hits.Load(),
		Reverified: ps.reverified.Load(),
		Evicted:    ps.evicted.Load(),
		Dropped:    ps.dropped.Load(),
		Cached:     cached,
		Live:       ps.live.Load(),
	}
}

// pagemap is the process's descriptor of /proc/self/pagemap, opened once
// and kept for the life of the process (it describes the process itself,
// whatever cache asks). scan is set when the kernel has the PAGEMAP_SCAN
// ioctl (Linux 6.7): it answers "is any page of this range not present" in
// one call, without copying an entry per page to user space, about four
// times faster than a pread of the entries for a 400 KB needle (see
// bench/RESULTS.md, "Store GET").
var pagemap struct {
	once sync.Once
	fd   int
	scan bool
	err  error
}

// openPagemap opens /proc/self/pagemap (once) and checks on a page of its
// own that it reports present pages as present, and absent ones as absent.
func openPagemap() error {
	pagemap.once.Do(func() {
		fd, err := unix.Open("/proc/self/pagemap", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			pagemap.err = fmt.Errorf("open /proc/self/pagemap: %w", err)
			return
		}
		page := os.Getpagesize()
		probe, err := unix.Mmap(-1, 0, 2*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			unix.Close(fd)
			pagemap.err = fmt.Errorf("probe /proc/self/pagemap: %w", err)
			return
		}
		defer unix.Munmap(probe)
		probe[0] = 1 // the first page present, the second never touched
		pagemap.fd = fd
		in, inErr := presentScan(probe[:page])
		out, outErr := presentScan(probe[page:])
		pagemap.scan = inErr == nil && outErr == nil && in && !out
		if pagemap.scan {
			return
		}
		in, inErr = presentPread(probe[:page])
		out, outErr = presentPread(probe[page:])
		if inErr != nil || outErr != nil || !in || out {
			unix.Close(fd)
			pagemap.fd = -1
			pagemap.err = fmt.Errorf("/proc/self/pagemap does not report which pages are present (%v, %v)", inErr, outErr)
		}
	})
	return pagemap.err
}

// present reports whether every page of b (page-aligned, of a mapping of
// the process) is present in the process's page tables.
func present(b []byte) (bool, error) {
	if pagemap.scan {
		return presentScan(b)
	}
	return presentPread(b)
}

// pmScanArg is struct pm_scan_arg of <linux/fs.h>, the argument of the
// PAGEMAP_SCAN ioctl; pageRegion is struct page_region, one range it
// returns.
type pmScanArg struct {
	size, flags, start, end, walkEnd, vec, vecLen, maxPages uint64
	categoryInverted, categoryMask, categoryAnyofMask       uint64
	returnMask                                              uint64
}

type pageRegion struct{ start, end, categories uint64 }

const (
	// pagemapScan is PAGEMAP_SCAN, _IOWR('f', 16, struct pm_scan_arg).
	pagemapScan = 0xc0606610
	// pageIsPresent is PAGE_IS_PRESENT, the category of present pages.
	pageIsPresent = 1 << 3
)

// presentScan asks PAGEMAP_SCAN for the first page of b that is not
// present (the present category inverted), and reports whether there is
// none. The call walks the process's page tables and never reads the
// disk, so it is made without the scheduler (RawSyscall), as an event
// loop makes its socket reads: through the scheduler (Syscall), a loop
// preempted in it by another process for longer than the runtime
// monitor's tick could have its P handed to another thread, and the
// monitor, which sleeps longer only while it finds no such call, went
// back to waking every 20 µs. On the Zipf mix
// at 16 connections this halved the store's context switches per
// request, from 0.76 to 0.35 (nginx: 0.38; see bench/RESULTS.md).
func presentScan(b []byte) (bool, error) {
	var r pageRegion
	start := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	arg := pmScanArg{
		size:             uint64(unsafe.Sizeof(pmScanArg{})),
		start:            start,
		end:              start + uint64(len(b)),
		vec:              uint64(uintptr(unsafe.Pointer(&r))),
		vecLen:           1,
		maxPages:         1,
		categoryInverted: pageIsPresent,
		categoryMask:     pageIsPresent,
		returnMask:       pageIsPresent,
	}
	n, _, errno := unix.RawSyscall(unix.SYS_IOCTL, uintptr(pagemap.fd), pagemapScan, uintptr(unsafe.Pointer(&arg)))
	if errno != 0 {
		return false, fmt.Errorf("PAGEMAP_SCAN: %w", errno)
	}
	return n == 0, nil
}

// pagemapChunk is how many pagemap entries one pread reads; the buffer
// lives on the stack.
const pagemapChunk = 256

// presentPread reads the /proc/self/pagemap entries of the pages of b and
// reports whether bit 63 ("present") is set in each. The entries of
// consecutive pages are consecutive, so one pread reads those of a whole
// needle (up to pagemapChunk pages).
func presentPread(b []byte) (bool, error) {
	var buf [pagemapChunk * 8]byte
	page := int64(os.Getpagesize())
	first := int64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) / page
	pages := (int64(len(b)) + page - 1) / page
	for done := int64(0); done < pages; {
		k := min(pages-done, pagemapChunk)
		got, err := unix.Pread(pagemap.fd, buf[:k*8], (first+done)*8)
		if err == unix.EINTR {
			continue
		}
		if err != nil || int64(got) != k*8 {
			return false, fmt.Errorf("read /proc/self/pagemap: %d of %d bytes: %v", got, k*8, err)
		}
		for i := range k {
			if binary.LittleEndian.Uint64(buf[i*8:])>>63 == 0 {
				return false, nil
			}
		}
		done += k
	}
	return true, nil
}

// hasRoom reports whether the cache holds fewer mappings than its bound.
// A needle under MapMin is mapped only then: its first verification
// (mmap, a fault, the hash, and an munmap when it is evicted) costs a few
// system calls more than the pread it replaces, which its rereads repay
// only when they come before it is evicted. Were it to evict, a workload
// of more small needles than the bound, read about as often each, would
// pay that on nearly every read; this way it pays a map lookup. Large
// needles, whose hash dwarfs the mapping, evict with CLOCK as before,
// small ones among the others, and so make room again.
func (ps *Pins) hasRoom() bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return len(ps.mu.byKey) < ps.max
}

// get returns the verified mapping of the needle at off of m, held, or
// nil.
func (ps *Pins) get(m *datMap, off int64) *pin {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p := ps.mu.byKey[pinKey{m, off}]
	if p != nil {
		if p.holders == 0 {
			ps.mu.held++
		}
		p.holders++
		p.used = true
	}
	return p
}

// release ends a holder's use of p; the last holder of a dead mapping
// unmaps it.
func (ps *Pins) release(p *pin) {
	ps.mu.Lock()
	p.holders--
	if p.holders == 0 && !p.dead {
		ps.mu.held--
	}
	last := p.dead && p.holders == 0
	ps.mu.Unlock()
	if last {
		ps.unmap(p)
	}
}

// drop takes p (held by the caller) out of the cache; the caller's release
// unmaps it.
func (ps *Pins) drop(p *pin) {
	ps.mu.Lock()
	if !p.dead {
		ps.removeLocked(p)
		ps.dropped.Add(1)
	}
	ps.mu.Unlock()
}

// removeLocked takes p (cached) out of the map and the ring.
func (ps *Pins) removeLocked(p *pin) {
	delete(ps.mu.byKey, p.key)
	ps.mu.ring[p.slot] = nil
	p.dead = true
	if p.holders > 0 {
		ps.mu.held--
	}
}

// reserve counts a verified mapping about to be made, and reports false,
// counting nothing, when liveCap of them exist already (cached or not):
// the caller then reads the needle with a pread. A reservation is given
// back by unmap, or by unreserve when the mapping could not be made.
func (ps *Pins) reserve() bool {
	for {
		n := ps.live.Load()
		if n >= int64(ps.liveMax) {
			return false
		}
		if ps.live.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// unreserve gives back a reservation whose mapping could not be made.
func (ps *Pins) unreserve() { ps.live.Add(-1) }

// mapNeedle maps the pages of the needle at [off, off+n) of m's file into
// a verified mapping of its own, held by the caller (its holders is 1) and
// not yet in the cache. Nothing has touched its pages yet. The caller has
// reserved it (reserve); when it fails, the reservation is given back.
//
// The mapping lies just above a guard page of its own (anonymous,
// PROT_NONE), so that it is a mapping (VMA) apart from every other: two
// verified mappings of consecutive pages of the file placed next to each
// other in memory would otherwise be merged by the kernel into one, and a
// fault while verifying one would map pages of the other (the kernel maps
// up to 64 KiB of resident pages around a fault, within one VMA), making
// them present without their own verification.
func (ps *Pins) mapNeedle(m *datMap, off int64, n int) (*pin, error) {
	start := off &^ (ps.page - 1)
	end := (off + int64(n) + ps.page - 1) &^ (ps.page - 1)
	size := uintptr(end - start)
	span := size + uintptr(ps.page)
	base, err := unix.MmapPtr(-1, 0, nil, span, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		ps.unreserve()
		return nil, fmt.Errorf("map needle: reserve: %w", err)
	}
	at := unsafe.Add(base, ps.page)
	if _, err := unix.MmapPtr(m.fd, start, at, size, unix.PROT_READ, unix.MAP_SHARED|unix.MAP_FIXED); err != nil {
		unix.MunmapPtr(base, span)
		ps.unreserve()
		return nil, fmt.Errorf("map needle: %w", err)
	}
	data := unsafe.Slice((*byte)(at), size)
	// A page that leaves the page cache between the residency check and
	// the hash is faulted in alone, without readahead (as on the big
	// mapping, see mapDat).
	if err := unix.Madvise(data, unix.MADV_RANDOM); err != nil {
		unix.MunmapPtr(base, span)
		ps.unreserve()
		return nil, fmt.Errorf("map needle: madvise: %w", err)
	}
	m.acquire() // the mapping's descriptor stays open while it is mapped
	return &pin{key: pinKey{m, off}, base: base, span: span, data: data, skip: int(off - start), n: n, holders: 1}, nil
}

// unmap unmaps p (and its guard page) and ends its hold on its file.
func (ps *Pins) unmap(p *pin) {
	unix.MunmapPtr(p.base, p.span)
	p.data, p.base = nil, nil
	p.key.m.release()
	ps.live.Add(-1)
}

// insert puts p (held by the caller, just verified) into the cache,
// evicting with CLOCK when the cache is full. It reports false when p could
// not go in (another read of the needle cached one first, or every cached
// mapping is held, which it knows without a scan): p is then dead, and the
// caller's release unmaps it.
func (ps *Pins) insert(p *pin) bool {
	var victim *pin
	ps.mu.Lock()
	ok := ps.insertLocked(p, &victim)
	if !ok {
		p.dead = true
	}
	ps.mu.Unlock()
	if victim != nil {
		ps.unmap(victim)
	}
	return ok
}

func (ps *Pins) insertLocked(p *pin, victim **pin) bool {
	if _, ok := ps.mu.byKey[p.key]; ok {
		return false
	}
	ring := ps.mu.ring
	slot := -1
	if len(ring) < ps.max {
		slot = len(ring)
		ps.mu.ring = append(ring, nil)
	} else {
		if ps.mu.held >= len(ring) {
			// Every slot holds a mapping that is held: none to evict, and
			// no free slot (a free one is not in byKey, so not in held).
			return false
		}
		// Two turns of the hand clear every reference bit once; a
		// mapping held by a read is passed over.
		for range 2*len(ring) + 1 {
			i := ps.mu.hand
			ps.mu.hand = (i + 1) % len(ring)
			c := ring[i]
			if c == nil {
				slot = i
				break
			}
			if c.holders > 0 {
				continue
			}
			if c.used {
				c.used = false
				continue
			}
			ps.removeLocked(c)
			ps.evicted.Add(1)
			*victim = c // not held: unmapped by the caller, outside the lock
			slot = i
			break
		}
		if slot < 0 {
			return false
		}
	}
	p.slot = slot
	ps.mu.ring[slot] = p
	ps.mu.byKey[p.key] = p
	if p.holders > 0 {
		ps.mu.held++
	}
	return true
}

// dropMap drops every verified mapping of m's file (a compaction swapped
// it out, or its volume closed); those a read holds are unmapped when it
// is done. Then m's descriptor is closed by its last release.
func (ps *Pins) dropMap(m *datMap) {
	if ps == nil || m == nil {
		return
	}
	var free []*pin
	ps.mu.Lock()
	for k, p := range ps.mu.byKey {
		if k.m != m {
			continue
		}
		ps.removeLocked(p)
		ps.dropped.Add(1)
		if p.holders == 0 {
			free = append(free, p)
		}
	}
	ps.mu.Unlock()
	for _, p := range free {
		ps.unmap(p)
	}
}

// dropAt drops the verified mapping of the needle at off of m, if any.
func (ps *Pins) dropAt(m *datMap, off int64) {
	ps.mu.Lock()
	p := ps.mu.byKey[pinKey{m, off}]
	free := false
	if p != nil {
		ps.removeLocked(p)
		ps.dropped.Add(1)
		free = p.holders == 0
	}
	ps.mu.Unlock()
	if free {
		ps.unmap(p)
	}
}

// dropPinsLocked drops the verified mappings of the live needles of key a
// tombstone for (key, size) deletes (size allSizes: every size). Reads
// never serve a deleted needle (the index goes first); this frees its
// mapping now rather than when CLOCK comes to it. The caller holds v.mu.
func (v *Volume) dropPinsLocked(key uint64, size uint32) {
	ps, m := v.opts.Pins, v.mu.dmap
	if ps == nil || m == nil {
		return
	}
	v.mu.index.sizesOf(key, func(s, off, _ uint32) {
		if size == allSizes || s == size {
			ps.dropAt(m, int64(off)*needle.Alignment)
		}
	})
}

// verify decodes and verifies the needle through its verified mapping (the
// only thing that ever touches it), with decodeMapped, which turns a fault
// reading the mapping into errMapFault.
func (p *pin) verify(f needle.Format) (needle.Needle, error) {
	return decodeMapped(f.Decode, p.data[p.skip:p.skip+p.n:p.skip+p.n], p.key.off)
}

// readPinned reads the needle at [start, start+n) of m (n at least PinMin,
// inside the mapping) through the cache of verified mappings. ok is false
// when the needle must be read with a pread into the caller's buffer:
// notAll then says it is not all in the page cache (or touching it
// faulted); otherwise it is resident but has no verified mapping to
// answer from (another read is verifying it, as many verified mappings
// exist as liveCap allows, no mapping could be made, or a needle under
// MapMin finds the cache full). With ok, the returned Ref
// and error are ReadRef's answer, and a Ref holds the verified mapping it
// was answered from (see Ref.StillVerified). The caller holds v.mu
// shared.
func (v *Volume) readPinned(ps *Pins, m *datMap, key, cookie uint64, size needle.SizeCode, start int64, n int) (ref Ref, ok, notAll bool, err error) {
	p := ps.get(m, start)
	if p != nil && (p.n != n || p.hdr.Key != key || p.hdr.Size != size) {
		// The index names another needle at this offset of this file: it
		// cannot happen (a file is append-only), but a mapping that does
		// not match is never trusted.
		ps.drop(p)
		ps.release(p)
		p = nil
	}
	if p != nil {
		// A verification of p in progress (odd seq) faults its pages in
		// before it has hashed them: its pages present mean nothing until
		// it is done, so seq is read before and after the presence check.
		seq := p.seq.Load()
		if seq%2 == 0 && p.stillVerified(seq) {
			ps.hits.Add(1)
			return v.pinnedRef(ps, p, seq, m, p.hdr, p.dataLen, start, cookie)
		}
		// A page was unmapped since the last verification (it may have
		// been read again from the disk), or a verification is running.
		if !m.resident(start, n) {
			ps.drop(p)
			ps.release(p)
			return Ref{}, false, true, nil // one pread, as without the cache
		}
		if seq%2 != 0 || !p.seq.CompareAndSwap(seq, seq+1) {
			// Another read is verifying p: read the needle into the
			// caller's buffer (one pread of resident pages), since a Ref
			// is mapped only with a verified mapping's proof.
			ps.release(p)
			return Ref{}, false, false, nil
		}
		nd, err := p.verify(v.format)
		if errors.Is(err, errMapFault) {
			ps.drop(p)
			ps.release(p)
			return Ref{}, false, true, nil
		}
		ps.reverified.Add(1)
		if err == nil {
			nd, err = verifyRead(nd, key, size)
		}
		if err != nil {
			ps.drop(p) // and never trusted again: seq stays odd
			ps.release(p)
			return Ref{}, true, false, fmt.Errorf("volume %d at offset %d: %w", v.vid, start, err)
		}
		p.seq.Store(seq + 2)
		return v.pinnedRef(ps, p, seq+2, m, withoutData(nd), len(nd.Data), start, cookie)
	}
	if n < MapMin && !ps.hasRoom() {
		// A needle under MapMin costs little more to read with a pread
		// than to map and hash: it takes a free place, never one of
		// another mapping (see hasRoom).
		return Ref{}, false, false, nil
	}
	if !m.resident(start, n) {
		return Ref{}, false, true, nil
	}
	if !ps.reserve() {
		// As many verified mappings exist as may (liveCap): answers hold
		// those out of the cache. Read the resident needle into the
		// caller's buffer, as without the cache.
		return Ref{}, false, false, nil
	}
	p, err = ps.mapNeedle(m, start, n)
	if err != nil {
		// No mapping to spare (vm.max_map_count): read the resident
		// needle into the caller's buffer, as without the cache.
		return Ref{}, false, false, nil
	}
	// Nothing else sees p before insert: its seq stays what it was made
	// with while it is verified.
	seq := p.seq.Load()
	nd, err := p.verify(v.format)
	if errors.Is(err, errMapFault) {
		p.dead = true // never cached
		ps.release(p)
		return Ref{}, false, true, nil
	}
	if err == nil {
		nd, err = verifyRead(nd, key, size)
	}
	if err != nil {
		p.dead = true
		ps.release(p)
		return Ref{}, true, false, fmt.Errorf("volume %d at offset %d: %w", v.vid, start, err)
	}
	p.hdr, p.dataLen = withoutData(nd), len(nd.Data)
	// A mapping that cannot go into the cache (insert reports false) is
	// verified and mapped all the same: the Ref holds it, and its release
	// unmaps it.
	ps.insert(p)
	return v.pinnedRef(ps, p, seq, m, p.hdr, p.dataLen, start, cookie)
}

// stillVerified reports whether p's seq is still seq (even: the value at
// which a read found or made its present pages verified) and every page
// of p is present, as Ref.StillVerified explains. p is held by the
// caller, so it is mapped, whether it is still in the cache or was
// evicted or dropped from it since: a mapping out of the cache is touched
// by nothing but a read that held it before it left and verifies it
// again, which changes seq; so the answer means the same either way.
func (p *pin) stillVerified(seq uint64) bool {
	if p.seq.Load() != seq {
		return false
	}
	all, err := present(p.data)
	// A verification that began after the first load faults pages in
	// before hashing them: seq is read again after the presence check.
	return err == nil && all && p.seq.Load() == seq
}

// withoutData returns nd with its Data cleared, as a verified mapping
// keeps it.
func withoutData(nd needle.Needle) needle.Needle {
	nd.Data = nil
	return nd
}

// pinnedRef answers a read of the verified needle hdr at start of m from
// p, which the caller holds and found verified at seq: its data are those
// of the file's mapping (never of the verified mapping, which only
// verification touches), and the Ref keeps the caller's hold on p until
// Release (a wrong cookie gives it back at once).
func (v *Volume) pinnedRef(ps *Pins, p *pin, seq uint64, m *datMap, hdr needle.Needle, dataLen int, start int64, cookie uint64) (Ref, bool, bool, error) {
	if hdr.Cookie != cookie {
		ps.release(p)
		return Ref{}, true, false, ErrNotFound
	}
	at := start + needle.HeaderSize
	end := at + int64(dataLen)
	hdr.Data = m.data[at:end:end]
	m.acquire()
	v.mappedReads.Add(1)
	return Ref{Needle: hdr, m: m, off: at, pins: ps, pin: p, seq: seq}, true, false, nil
}
