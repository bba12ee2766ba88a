package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// newPins returns a cache of max verified mappings, closed with the test.
func newPins(t testing.TB, max int) *Pins {
	t.Helper()
	ps, err := NewPins(max)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// largeNeedles returns the needles of all that ReadRef serves from the
// mapping with or without verified mappings (MapMin bytes or more).
func largeNeedles(all []*needle.Needle) []*needle.Needle {
	var large []*needle.Needle
	for _, n := range all {
		if needle.EncodedLen(len(n.Data)) >= MapMin {
			large = append(large, n)
		}
	}
	return large
}

// midNeedles returns the needles of all that ReadRef serves from the
// mapping with verified mappings only (PinMin bytes or more, under
// MapMin).
func midNeedles(all []*needle.Needle) []*needle.Needle {
	var mid []*needle.Needle
	for _, n := range all {
		if l := needle.EncodedLen(len(n.Data)); l >= PinMin && l < MapMin {
			mid = append(mid, n)
		}
	}
	return mid
}

// pinnedKinds runs test on the needles of MapMin bytes or more and on
// those from PinMin to MapMin, which only verified mappings serve from
// the mapping.
func pinnedKinds(t *testing.T, test func(t *testing.T, pick func([]*needle.Needle) []*needle.Needle)) {
	t.Run("large", func(t *testing.T) { test(t, largeNeedles) })
	t.Run("under-MapMin", func(t *testing.T) { test(t, midNeedles) })
}

// pinHolders returns p's holders.
func pinHolders(ps *Pins, p *pin) int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return p.holders
}

// pinOf returns the cached verified mapping of want, or nil.
func pinOf(t testing.TB, v *Volume, want *needle.Needle) *pin {
	t.Helper()
	e, ok := v.Locate(want.Key, want.Size)
	if !ok {
		t.Fatalf("locate key %x size %v", want.Key, want.Size)
	}
	v.mu.RLock()
	m := v.mu.dmap
	v.mu.RUnlock()
	ps := v.opts.Pins
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.mu.byKey[pinKey{m, e.Offset}]
}

// readPinnedOnce reads want with ReadRef, checks its bytes and fields
// against the needle written, releases it and returns the needle read
// (without its data).
func readPinnedOnce(t testing.TB, v *Volume, want *needle.Needle) needle.Needle {
	t.Helper()
	ref := readRef(t, v, want)
	defer ref.Release()
	if !ref.Mapped() {
		t.Fatalf("key %x size %v: resident, yet not mapped", want.Key, want.Size)
	}
	fd, off, _ := ref.Source()
	got := make([]byte, len(want.Data))
	if _, err := unix.Pread(fd, got, off); err != nil || !bytes.Equal(got, want.Data) {
		t.Fatalf("key %x size %v: the source does not hold the needle's data (%v)", want.Key, want.Size, err)
	}
	nd := ref.Needle
	nd.Data = nil
	if nd.Key != want.Key || nd.Size != want.Size || nd.Cookie != want.Cookie || nd.ContentType != want.ContentType || nd.Checksum == 0 || nd.AppendTime == 0 {
		t.Fatalf("key %x size %v: fields %+v", want.Key, want.Size, nd)
	}
	return nd
}

// flipByte flips one byte of the volume file at off through the page
// cache (as another process writing the file would), and makes it durable.
func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestPinsSecondReadDoesNotHash: the second read of a large needle is
// answered from its verified mapping (a hit, no hash) with the same bytes
// and fields as the first. That it is not hashed shows through a change
// made through the page cache (the case verified mappings leave out of
// scope, see pins_linux.go): with verified mappings the changed byte is
// served, without them every read hashes and the change is caught.
func TestPinsSecondReadDoesNotHash(t *testing.T) {
	pinnedKinds(t, testPinsSecondReadDoesNotHash)
}

func testPinsSecondReadDoesNotHash(t *testing.T, pick func([]*needle.Needle) []*needle.Needle) {
	ps := newPins(t, 64)
	v, dir, all := osVolumeWith(t, 2, Options{FS: vfs.Default, Pins: ps})
	large := pick(all)
	if len(large) < 2 {
		t.Fatalf("%d needles of the kind, want 2", len(large))
	}
	for i, n := range large {
		first := readPinnedOnce(t, v, n)
		if st := ps.Stats(); st.Hits != int64(i) || st.Cached != i+1 || st.Live != int64(i+1) {
			t.Fatalf("after the first read of needle %d: %+v", i, st)
		}
		second := readPinnedOnce(t, v, n)
		if st := ps.Stats(); st.Hits != int64(i+1) || st.Reverified != 0 {
			t.Fatalf("the second read of needle %d was not a hit: %+v", i, st)
		}
		if !reflect.DeepEqual(first, second) {
			t.Fatalf("needle %d: first read %+v, second %+v", i, first, second)
		}
	}
	if st := v.Status(); st.MappedReads != int64(2*len(large)) || st.Preads != 0 {
		t.Fatalf("%d mapped reads and %d preads, want %d and 0", st.MappedReads, st.Preads, 2*len(large))
	}

	n := large[0]
	e, _ := v.Locate(n.Key, n.Size)
	flipByte(t, DatPath(dir, 3), e.Offset+needle.HeaderSize+10)
	ref, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil)
	if err != nil {
		t.Fatalf("a pinned needle changed through the page cache: %v, want it served unhashed", err)
	}
	if ref.Needle.Data[10] == n.Data[10] {
		t.Fatal("the changed byte is not in the answer")
	}
	ref.Release()

	// The same change, seen by a volume that hashes every read.
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if st := ps.Stats(); st.Live != 0 || st.Cached != 0 {
		t.Fatalf("after close: %+v, want no mapping", st)
	}
	v, err = Open(context.Background(), dir, 3, Options{FS: vfs.Default})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for range 2 {
		if _, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil); !IsCorruption(err) {
			t.Fatalf("without verified mappings, a changed needle read: %v, want corruption", err)
		}
	}
	// Without verified mappings nothing proves mapped bytes at send time:
	// every read, resident or not, is one pread into the buffer.
	preads := v.Status().Preads
	for range 2 {
		ref := readRef(t, v, largeNeedles(all)[1])
		if ref.Mapped() || !ref.StillVerified() {
			t.Fatalf("without verified mappings: mapped %v, still verified %v; want a buffer read, verified", ref.Mapped(), ref.StillVerified())
		}
		ref.Release()
	}
	if st := v.Status(); st.MappedReads != 0 || st.Preads != preads+2 || ps.Stats().Hits != int64(len(large)+1) {
		t.Fatalf("without verified mappings: %d mapped reads and %d preads (want 0 and %d), pins %+v", st.MappedReads, st.Preads, preads+2, ps.Stats())
	}
}

// evictPin takes the pages of p out of the process's page tables (as
// reclaim does first) and, when fromCache is set, drops them from the page
// cache too (as reclaim then does): the test's own reads of the answers
// mapped them in the volume's file mapping too, so they leave that one
// first.
func evictPin(t testing.TB, p *pin, path string, fromCache bool) {
	t.Helper()
	if err := unix.Madvise(p.data, unix.MADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if !fromCache {
		return
	}
	page := int64(os.Getpagesize())
	start := p.key.off &^ (page - 1)
	if err := unix.Madvise(p.key.m.data[start:start+int64(len(p.data))], unix.MADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), start, int64(len(p.data)), unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if p.key.m.resident(p.key.off, p.n) {
		// POSIX_FADV_DONTNEED is advice: the kernel keeps pages it
		// cannot drop at once (mapped elsewhere, dirty, under writeback).
		t.Skip("the kernel kept the needle's pages in the page cache after POSIX_FADV_DONTNEED")
	}
}

// TestPinsReverify: a verified mapping with a page gone from the page
// tables is verified again (through itself when the needle is all in the
// page cache, with one pread and the mapping dropped when it is not), and
// bytes changed on disk while the pages were out answer corrupt.
func TestPinsReverify(t *testing.T) {
	pinnedKinds(t, testPinsReverify)
}

func testPinsReverify(t *testing.T, pick func([]*needle.Needle) []*needle.Needle) {
	ps := newPins(t, 64)
	v, dir, all := osVolumeWith(t, 2, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	path := DatPath(dir, 3)
	n := pick(all)[1]
	readPinnedOnce(t, v, n)
	p := pinOf(t, v, n)
	if p == nil {
		t.Fatal("no verified mapping after a read")
	}
	if ok, err := present(p.data); err != nil || !ok {
		t.Fatalf("pages of a just verified mapping not present (%v)", err)
	}

	// Unmapped, still in the page cache (kept there: a page may be
	// evicted at any time): verified again through the verified mapping,
	// no pread; then a hit again.
	e, _ := v.Locate(n.Key, n.Size)
	unlock := lockRangeInPageCache(t, path, e.Offset, int(e.Length))
	evictPin(t, p, path, false)
	if ok, _ := present(p.data); ok {
		t.Fatal("MADV_DONTNEED left the pages present")
	}
	readPinnedOnce(t, v, n)
	if st := ps.Stats(); st.Reverified != 1 || st.Hits != 0 || v.Status().Preads != 0 {
		t.Fatalf("after the pages were unmapped: %+v, %d preads; want 1 reverification, 0 preads", st, v.Status().Preads)
	}
	readPinnedOnce(t, v, n)
	if st := ps.Stats(); st.Reverified != 1 || st.Hits != 1 {
		t.Fatalf("after the reverification: %+v, want a hit", st)
	}
	unlock()

	// While another read verifies the mapping again (its sequence odd),
	// its pages present prove nothing: the needle is read apart, with one
	// pread into the buffer (a Ref is mapped only with a proof), neither a
	// hit nor a reverification, and the mapping is not held.
	seq := p.seq.Load()
	p.seq.Store(seq + 1)
	apart := readRef(t, v, n)
	if apart.Mapped() || !apart.StillVerified() {
		t.Fatalf("during another read's verification: mapped %v, still verified %v; want a buffer read", apart.Mapped(), apart.StillVerified())
	}
	apart.Release()
	if st := ps.Stats(); st.Hits != 1 || st.Reverified != 1 || v.Status().Preads != 1 {
		t.Fatalf("during another read's verification: %+v, %d preads; want neither a hit nor a reverification, 1 pread", st, v.Status().Preads)
	}
	if holders := pinHolders(ps, p); holders != 0 {
		t.Fatalf("during another read's verification: the mapping has %d holders after the read, want 0", holders)
	}
	p.seq.Store(seq)

	// Out of the page cache: one pread, the stale mapping dropped; the
	// next read maps and verifies afresh.
	evictPin(t, p, path, true)
	if nd := readRef(t, v, n); nd.Mapped() {
		t.Fatal("a needle out of the page cache was served from the mapping")
	}
	if st := ps.Stats(); st.Dropped != 1 || st.Cached != 0 || st.Live != 0 || v.Status().Preads != 2 {
		t.Fatalf("after a read of evicted pages: %+v, %d preads; want the mapping dropped and 1 pread", st, v.Status().Preads)
	}
	readPinnedOnce(t, v, n)
	if p = pinOf(t, v, n); p == nil {
		t.Fatal("no verified mapping after a read of the resident needle")
	}

	// Changed while out of the page cache, then back in it (written
	// through a fresh descriptor): caught by the reverification.
	evictPin(t, p, path, true)
	flipByte(t, path, e.Offset+needle.HeaderSize+int64(len(n.Data))/2)
	unlock = lockRangeInPageCache(t, path, e.Offset, int(e.Length)) // back in the page cache
	if _, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil); !IsCorruption(err) {
		t.Fatalf("changed on disk while out, back in the page cache: %v, want corruption", err)
	}
	unlock()
	if st := ps.Stats(); st.Reverified != 2 || st.Cached != 0 || st.Live != 0 {
		t.Fatalf("after a corrupt reverification: %+v, want the mapping dropped", st)
	}

	// Changed while out, still out: the pread catches it.
	readCorrupt := func() {
		t.Helper()
		if _, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil); !IsCorruption(err) {
			t.Fatalf("a changed needle: %v, want corruption", err)
		}
	}
	flipByte(t, path, e.Offset+needle.HeaderSize+int64(len(n.Data))/2) // back as written
	readPinnedOnce(t, v, n)
	p = pinOf(t, v, n)
	evictPin(t, p, path, true)
	flipByte(t, path, e.Offset+needle.HeaderSize+3)
	dropCache(t, path)
	if p.key.m.resident(e.Offset, p.n) {
		t.Fatal("the needle is still in the page cache after POSIX_FADV_DONTNEED")
	}
	preads := v.Status().Preads
	readCorrupt()
	if v.Status().Preads != preads+1 {
		t.Fatal("a needle out of the page cache was not read with a pread")
	}
	if st := ps.Stats(); st.Cached != 0 || st.Live != 0 {
		t.Fatalf("a corrupt needle kept a verified mapping: %+v", st)
	}
	readCorrupt() // and never pinned since
}

// TestPinsDamagedBeforeFirstRead: a needle damaged on disk before it was
// ever verified answers corrupt, every time, and is never pinned.
func TestPinsDamagedBeforeFirstRead(t *testing.T) {
	pinnedKinds(t, testPinsDamagedBeforeFirstRead)
}

func testPinsDamagedBeforeFirstRead(t *testing.T, pick func([]*needle.Needle) []*needle.Needle) {
	v, dir, all := osVolume(t, 1)
	n := pick(all)[0]
	e, _ := v.Locate(n.Key, n.Size)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	flipByte(t, DatPath(dir, 3), e.Offset+needle.HeaderSize+1000)
	ps := newPins(t, 8)
	v, err := Open(context.Background(), dir, 3, Options{FS: vfs.Default, Pins: ps})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for range 3 {
		if _, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil); !IsCorruption(err) {
			t.Fatalf("damaged needle: %v, want corruption", err)
		}
	}
	if st := ps.Stats(); st.Cached != 0 || st.Live != 0 || st.Hits != 0 {
		t.Fatalf("a damaged needle was pinned: %+v", st)
	}
	if _, _, err := v.ReadRef(n.Key, n.Cookie+1, n.Size, nil); !IsCorruption(err) {
		t.Fatalf("damaged needle, wrong cookie: %v, want corruption (verified before the cookie)", err)
	}
}

// TestPinsSwapAndClose: a compaction swap drops every verified mapping of
// the old file (its descriptor closes with the last answer written from
// it), and Close drops those of the current one.
func TestPinsSwapAndClose(t *testing.T) {
	ps := newPins(t, 64)
	v, dir, all := osVolumeWith(t, 3, Options{FS: vfs.Default, Pins: ps})
	large := largeNeedles(all)
	for _, n := range large {
		readPinnedOnce(t, v, n)
	}
	if st := ps.Stats(); st.Cached != len(large) || st.Live != int64(len(large)) {
		t.Fatalf("%+v, want %d mappings", ps.Stats(), len(large))
	}
	v.mu.RLock()
	old := v.mu.dmap
	v.mu.RUnlock()
	held := readRef(t, v, large[0]) // an answer still being written
	if _, err := v.Delete(context.Background(), all[0].Key, all[0].Cookie, needle.SizeAll); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Compact(context.Background(), CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	// The answer still being written keeps its verified mapping (its
	// proof), out of the cache, until it is released.
	if st := ps.Stats(); st.Cached != 0 || st.Live != 1 {
		t.Fatalf("after the swap: %+v, want none cached and the held answer's mapping live", st)
	}
	checkHeld(t, ps)
	if !held.StillVerified() {
		t.Fatal("a held answer's mapping, dropped from the cache, no longer proves its resident pages")
	}
	if got := old.refs.Load(); got != 2 {
		t.Fatalf("the old file has %d references with one answer left, want 2 (the answer's and its verified mapping's)", got)
	}
	oldFd := old.fd
	held.Release()
	if st := ps.Stats(); st.Live != 0 {
		t.Fatalf("after the last answer: %+v, want no mapping", st)
	}
	if got := old.refs.Load(); got != 0 {
		t.Fatalf("the old file has %d references after the last answer, want 0", got)
	}
	if _, err := unix.FcntlInt(uintptr(oldFd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		// The number may have been reused by another descriptor since;
		// then it must not be a descriptor of the old file.
		if target, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(oldFd)); target == DatPath(dir, 3)+" (deleted)" {
			t.Fatalf("the old file's descriptor %d is still open", oldFd)
		}
	}
	for _, n := range large[2:] { // large[0] and large[1] were deleted
		readPinnedOnce(t, v, n)
	}
	if st := ps.Stats(); st.Cached != len(large)-2 {
		t.Fatalf("after reads of the new file: %+v", st)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if st := ps.Stats(); st.Cached != 0 || st.Live != 0 {
		t.Fatalf("after close: %+v, want no mapping", st)
	}
	if got := mapsOf(t, dir); got != 0 {
		t.Fatalf("%d mappings of the volume's files after close, want 0", got)
	}
}

// TestPinsDelete: deleting a pinned needle (one size, or the whole photo)
// drops its verified mapping, and the needle is not found.
func TestPinsDelete(t *testing.T) {
	ps := newPins(t, 16)
	v, _, all := osVolumeWith(t, 2, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	large := largeNeedles(all) // photo 1: large[0:2]; photo 2: large[2:4]
	for _, n := range large {
		readPinnedOnce(t, v, n)
	}
	for i, c := range []struct {
		n    *needle.Needle
		size needle.SizeCode
		gone []*needle.Needle
	}{
		{large[0], large[0].Size, large[:1]},
		{large[2], needle.SizeAll, large[2:4]},
	} {
		if _, err := v.Delete(context.Background(), c.n.Key, c.n.Cookie, c.size); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.gone {
			if _, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil); !errors.Is(err, ErrNotFound) {
				t.Fatalf("delete %d: read of a deleted needle: %v, want ErrNotFound", i, err)
			}
		}
	}
	if st := ps.Stats(); st.Cached != 1 || st.Live != 1 || st.Dropped != 3 || pinOf(t, v, large[1]) == nil {
		t.Fatalf("after deleting three pinned needles of four: %+v", st)
	}
	checkHeld(t, ps)
}

// TestPinsBound: the cache never holds more than its bound, and concurrent
// readers with a bound far under the needles read (evicting all the time)
// always get the right bytes: a mapping being checked or verified is never
// unmapped under its reader (run with -race).
func TestPinsBound(t *testing.T) {
	ps := newPins(t, 2)
	v, _, all := osVolumeWith(t, 4, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	large := largeNeedles(all)
	if len(large) < 6 {
		t.Fatalf("%d large needles", len(large))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				n := large[(g+i*(g+1))%len(large)]
				ref, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(ref.Needle.Data, n.Data) {
					ref.Release()
					errs <- errors.New("wrong bytes")
					return
				}
				if err := heldErr(ps); err != nil {
					ref.Release()
					errs <- err
					return
				}
				ref.Release()
				if st := ps.Stats(); st.Cached > 2 {
					errs <- errors.New("over the bound")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkHeld(t, ps)
	st := ps.Stats()
	if held := heldCount(ps); st.Cached > 2 || st.Live > 2 || st.Evicted == 0 || held != 0 {
		t.Fatalf("after concurrent reads with a bound of 2: %+v, %d held", st, held)
	}
	t.Logf("%+v", st)
}

// TestPinsEvictsUnheldOnly: CLOCK passes over a mapping that is held, and
// a full cache of held mappings takes no more.
func TestPinsEvictsUnheldOnly(t *testing.T) {
	ps := newPins(t, 1)
	v, _, all := osVolumeWith(t, 1, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	large := largeNeedles(all)
	readPinnedOnce(t, v, large[0])
	p := pinOf(t, v, large[0])
	held := ps.get(p.key.m, p.key.off)
	readPinnedOnce(t, v, large[1])
	if pinOf(t, v, large[0]) != held || pinOf(t, v, large[1]) != nil || ps.Stats().Evicted != 0 {
		t.Fatalf("a held mapping was evicted: %+v", ps.Stats())
	}
	if st := ps.Stats(); st.Live != 1 {
		t.Fatalf("the mapping that did not fit is still mapped: %+v", st)
	}
	checkHeld(t, ps)
	ps.release(held)
	checkHeld(t, ps)
	readPinnedOnce(t, v, large[1])
	if pinOf(t, v, large[1]) == nil || pinOf(t, v, large[0]) != nil || held.data != nil {
		t.Fatalf("the released mapping was not evicted for the new one: %+v", ps.Stats())
	}
	if st := ps.Stats(); st.Evicted != 1 || st.Live != 1 {
		t.Fatalf("%+v, want 1 eviction and 1 mapping", st)
	}
}

// BenchmarkReadRefPinned measures ReadRef of resident needles (5, 120
// and 400 KB) with a verified mapping (no hash, no copy) and without (one
// pread into the buffer, hashed there).
func BenchmarkReadRefPinned(b *testing.B) {
	for _, size := range []needle.SizeCode{needle.SizeThumb, needle.SizeSmall, needle.SizeLarge} {
		for _, c := range []struct {
			name string
			pins int
		}{{"hashed", 0}, {"pinned", 16}} {
			b.Run(fmt.Sprintf("size=%v/%s", size, c.name), func(b *testing.B) {
				opts := Options{FS: vfs.Default}
				if c.pins > 0 {
					opts.Pins = newPins(b, c.pins)
				}
				v, _, all := osVolumeWith(b, 1, opts)
				defer v.Close()
				n := all[size]
				mapped := c.pins > 0 && needle.EncodedLen(len(n.Data)) >= v.mapMin()
				warm, buf, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil)
				if err != nil {
					b.Fatal(err)
				}
				warm.Release()
				b.SetBytes(int64(len(n.Data)))
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					ref, got, err := v.ReadRef(n.Key, n.Cookie, n.Size, buf)
					if err != nil || ref.Mapped() != mapped {
						b.Fatalf("mapped %v, want %v: %v", ref.Mapped(), mapped, err)
					}
					buf = got
					ref.Release()
				}
			})
		}
	}
}

// TestPagemapPresence: both ways of asking /proc/self/pagemap (the
// PAGEMAP_SCAN ioctl where the kernel has it, and a pread of the entries)
// see every page of a verified mapping present once verified, and see one
// page taken out of the page tables.
func TestPagemapPresence(t *testing.T) {
	ps := newPins(t, 4)
	v, _, all := osVolumeWith(t, 1, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	n := all[3]
	readPinnedOnce(t, v, n)
	p := pinOf(t, v, n)
	page := os.Getpagesize()
	if len(p.data) < 64*page {
		t.Fatalf("a 400 KB needle maps %d bytes", len(p.data))
	}
	ways := map[string]func([]byte) (bool, error){"pread": presentPread}
	if pagemap.scan {
		ways["PAGEMAP_SCAN"] = presentScan
	} else {
		t.Log("the kernel has no PAGEMAP_SCAN; checking pread only")
	}
	for name, f := range ways {
		if ok, err := f(p.data); err != nil || !ok {
			t.Fatalf("%s: a verified mapping's pages not all present (%v)", name, err)
		}
	}
	if err := unix.Madvise(p.data[50*page:51*page], unix.MADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	for name, f := range ways {
		if ok, err := f(p.data); err != nil || ok {
			t.Fatalf("%s: one page taken out, yet all present (%v)", name, err)
		}
		if ok, err := f(p.data[:50*page]); err != nil || !ok {
			t.Fatalf("%s: the pages before the one taken out not present (%v)", name, err)
		}
	}
}

// BenchmarkPagemapPresence measures the two ways of asking whether the
// pages of a verified 400 KB needle are present.
func BenchmarkPagemapPresence(b *testing.B) {
	ps := newPins(b, 4)
	v, _, all := osVolumeWith(b, 1, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	readPinnedOnce(b, v, all[3])
	p := pinOf(b, v, all[3])
	for name, f := range map[string]func([]byte) (bool, error){"pread": presentPread, "scan": presentScan} {
		if name == "scan" && !pagemap.scan {
			continue
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if ok, err := f(p.data); err != nil || !ok {
					b.Fatal("not present", err)
				}
			}
		})
	}
}

// TestPinsStayApart: verified mappings of needles that fill whole,
// consecutive pages of the file, mapped one after another (so that the
// kernel places them next to each other), each remain a mapping (VMA) of
// their own: merged, a fault while verifying one would map the pages of
// the next without its verification (see mapNeedle).
func TestPinsStayApart(t *testing.T) {
	ps := newPins(t, 16)
	dir := t.TempDir()
	v, err := Create(context.Background(), dir, 3, Options{FS: vfs.Default, Pins: ps})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	page := os.Getpagesize()
	// The first needle ends on a page boundary (the superblock comes
	// first), the others are whole pages.
	lens := []int{10*page - SuperblockSize - needle.Overhead, 10*page - needle.Overhead, 10*page - needle.Overhead, 10*page - needle.Overhead}
	var ns []*needle.Needle
	for i, n := range lens {
		ns = append(ns, &needle.Needle{Key: uint64(i + 1), Cookie: 5, Size: needle.SizeLarge, ContentType: needle.TypeJPEG, Data: bytes.Repeat([]byte{byte(i)}, n)})
	}
	if _, err := v.Write(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	for i := len(ns) - 1; i >= 0; i-- { // mappings are placed top-down
		readPinnedOnce(t, v, ns[i])
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	adjacent := 0
	var prev *pin
	for _, n := range ns {
		p := pinOf(t, v, n)
		if p == nil {
			t.Fatal("not pinned")
		}
		lo := uintptr(unsafe.Pointer(unsafe.SliceData(p.data)))
		hi := lo + uintptr(len(p.data))
		want := strconv.FormatUint(uint64(lo), 16) + "-" + strconv.FormatUint(uint64(hi), 16) + " "
		if !bytes.Contains(maps, []byte("\n"+want)) && !bytes.HasPrefix(maps, []byte(want)) {
			t.Errorf("key %d: no mapping of exactly its pages (%s) in /proc/self/maps", n.Key, want)
		}
		if prev != nil && uintptr(unsafe.Pointer(unsafe.SliceData(prev.data)))+uintptr(len(prev.data)) == uintptr(p.base) {
			adjacent++ // nothing but p's guard page between them
		}
		prev = p
	}
	t.Logf("%d of %d verified mappings placed right below the next needle's guard page", adjacent, len(ns)-1)
}

// TestPinsSmallTakeOnlyRoom: a needle under MapMin is mapped only while
// the cache is under its bound; with the cache full it is read with one
// pread, evicting nothing, and once a mapping leaves (here a large
// needle's, by CLOCK or a delete) it takes the room. A large needle
// evicts as before, small mappings among others.
func TestPinsSmallTakeOnlyRoom(t *testing.T) {
	ps := newPins(t, 2)
	v, _, all := osVolumeWith(t, 2, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	large, mid := largeNeedles(all), midNeedles(all)
	if len(large) < 3 || len(mid) < 2 {
		t.Fatalf("%d large and %d mid needles", len(large), len(mid))
	}
	readPinnedOnce(t, v, large[0])
	readPinnedOnce(t, v, large[1])
	before := ps.Stats()
	preads := v.Status().Preads
	for range 3 {
		ref := readRef(t, v, mid[0])
		if ref.Mapped() {
			t.Fatal("a needle under MapMin was mapped into a full cache")
		}
		ref.Release()
	}
	if st := ps.Stats(); st.Cached != 2 || st.Evicted != before.Evicted || st.Live != 2 || pinOf(t, v, mid[0]) != nil {
		t.Fatalf("after reads of a needle under MapMin into a full cache: %+v, want the two large mappings kept", st)
	}
	if got := v.Status().Preads - preads; got != 3 {
		t.Fatalf("%d preads for 3 reads of a needle under MapMin with the cache full, want 3", got)
	}

	// A delete frees a place: the small needle takes it, and is a hit
	// on its next read.
	if _, err := v.Delete(context.Background(), large[0].Key, large[0].Cookie, large[0].Size); err != nil {
		t.Fatal(err)
	}
	readPinnedOnce(t, v, mid[0])
	hits := ps.Stats().Hits
	readPinnedOnce(t, v, mid[0])
	if st := ps.Stats(); st.Hits != hits+1 || st.Cached != 2 || pinOf(t, v, mid[0]) == nil {
		t.Fatalf("a needle under MapMin with room in the cache: %+v, want it mapped and then a hit", st)
	}

	// A large needle evicts (here the small mapping or the large one,
	// whichever CLOCK reaches first): the bound holds.
	readPinnedOnce(t, v, large[2])
	if st := ps.Stats(); st.Cached != 2 || st.Evicted != before.Evicted+1 || pinOf(t, v, large[2]) == nil {
		t.Fatalf("a large needle into a full cache: %+v, want one eviction and it mapped", st)
	}
}

// TestRefStillVerified: a Ref answered from a verified mapping holds it
// (one holder until Release, which gives it back exactly once) and proves
// its bytes while every page of the mapping is present; once a page left
// (as reclaim unmaps it first) it never proves them again, not even after
// a later read faulted the pages back in and verified them again (that
// read's own Ref does). A mapping that could not go into the cache (every
// cached one held) still answers, held by its Ref, and is unmapped at its
// release.
func TestRefStillVerified(t *testing.T) {
	pinnedKinds(t, testRefStillVerified)
}

func testRefStillVerified(t *testing.T, pick func([]*needle.Needle) []*needle.Needle) {
	ps := newPins(t, 1)
	v, dir, all := osVolumeWith(t, 2, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	path := DatPath(dir, 3)
	kind := pick(all)
	n, other := kind[0], kind[1]
	e, _ := v.Locate(n.Key, n.Size)
	unlock := lockRangeInPageCache(t, path, e.Offset, int(e.Length))
	defer unlock()

	ref := readRef(t, v, n)
	if !ref.Mapped() || !ref.StillVerified() {
		t.Fatalf("just read: mapped %v, still verified %v; want both", ref.Mapped(), ref.StillVerified())
	}
	p := pinOf(t, v, n)
	if p == nil || pinHolders(ps, p) != 1 {
		t.Fatalf("a held Ref: mapping %p, want it cached and held once", p)
	}

	// Every cached mapping is held: a large needle's fresh mapping cannot
	// go in, yet answers, held by its Ref alone (a needle under MapMin is
	// not mapped into a full cache at all: one pread into the buffer).
	o := readRef(t, v, other)
	large := needle.EncodedLen(len(other.Data)) >= MapMin
	if o.Mapped() != large || !o.StillVerified() {
		t.Fatalf("a needle of %d bytes read into a full cache: mapped %v, still verified %v; want mapped %v, verified", len(other.Data), o.Mapped(), o.StillVerified(), large)
	}
	if st := ps.Stats(); large && (st.Cached != 1 || st.Live != 2) {
		t.Fatalf("with a mapping kept out of the cache held: %+v, want 1 cached, 2 live", st)
	}
	o.Release()
	o.Release()
	if st := ps.Stats(); st.Cached != 1 || st.Live != 1 {
		t.Fatalf("after its Ref's release: %+v, want it unmapped", st)
	}

	// A page of the verified mapping unmapped (the pages stay in the page
	// cache): the held Ref proves nothing any more.
	evictPin(t, p, path, false)
	if ref.StillVerified() {
		t.Fatal("a page of the verified mapping left it, yet the Ref still proves its bytes")
	}
	// Read again: the mapping is verified again (its pages faulted back
	// in, its seq moved on); the new Ref proves its bytes, the old one
	// still does not.
	again := readRef(t, v, n)
	if st := ps.Stats(); st.Reverified != 1 || !again.Mapped() || !again.StillVerified() {
		t.Fatalf("read again: %+v, mapped %v, still verified %v; want a reverification, mapped and verified", st, again.Mapped(), again.StillVerified())
	}
	if ok, err := present(p.data); err != nil || !ok {
		t.Fatalf("after the reverification the mapping's pages are not present (%v)", err)
	}
	if ref.StillVerified() {
		t.Fatal("the pages were verified again by another read, yet the first Ref proves its bytes again")
	}
	if h := pinHolders(ps, p); h != 2 {
		t.Fatalf("two Refs of one mapping: %d holders, want 2", h)
	}
	checkHeld(t, ps)
	ref.Release()
	ref.Release() // a second release does nothing
	if h := pinHolders(ps, p); h != 1 {
		t.Fatalf("after one Ref's release (twice): %d holders, want 1", h)
	}

	// Out of the page cache altogether: the Ref no longer proves its
	// bytes; the next read is one pread into the buffer, which does.
	unlock()
	evictPin(t, p, path, true)
	if again.StillVerified() {
		t.Fatal("the needle's pages left the page cache, yet the Ref still proves its bytes")
	}
	cold := readRef(t, v, n)
	if cold.Mapped() || !cold.StillVerified() {
		t.Fatalf("a needle out of the page cache: mapped %v, still verified %v; want a buffer read", cold.Mapped(), cold.StillVerified())
	}
	cold.Release()
	// The dropped mapping stays mapped while its last Ref holds it.
	if st := ps.Stats(); st.Cached != 0 || st.Live != 1 {
		t.Fatalf("a dropped mapping still held: %+v, want none cached, 1 live", st)
	}
	checkHeld(t, ps)
	again.Release()
	if st := ps.Stats(); st.Live != 0 {
		t.Fatalf("after the last release: %+v, want none live", st)
	}
}

// TestRefCopyOut: CopyOut copies a mapped Ref's bytes into the buffer
// and gives back its mappings (the Ref is then in memory, verified); a
// Ref whose verified mapping lost a page is refused, its bytes never
// copied, and released all the same.
func TestRefCopyOut(t *testing.T) {
	ps := newPins(t, 16)
	v, dir, all := osVolumeWith(t, 1, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	n := largeNeedles(all)[0]
	ref := readRef(t, v, n)
	if !ref.Mapped() {
		t.Fatal("resident, yet not mapped")
	}
	buf, err := ref.CopyOut(make([]byte, 0, 16))
	if err != nil || ref.Mapped() || !ref.StillVerified() || !bytes.Equal(ref.Needle.Data, n.Data) || !bytes.Equal(buf, n.Data) {
		t.Fatalf("copied out: %v, mapped %v, still verified %v, bytes equal %v", err, ref.Mapped(), ref.StillVerified(), bytes.Equal(ref.Needle.Data, n.Data))
	}
	p := pinOf(t, v, n)
	if h := pinHolders(ps, p); h != 0 {
		t.Fatalf("after CopyOut the verified mapping has %d holders, want 0", h)
	}
	ref.Release() // nothing left to release

	ref = readRef(t, v, n)
	evictPin(t, p, DatPath(dir, 3), false)
	if _, err := ref.CopyOut(nil); err == nil {
		t.Fatal("a Ref whose verified mapping lost a page was copied out")
	}
	if ref.Mapped() || pinHolders(ps, p) != 0 {
		t.Fatalf("after a refused CopyOut: mapped %v, %d holders; want both released", ref.Mapped(), pinHolders(ps, p))
	}
}

// TestRefStillVerifiedConcurrent: readers of one needle hold, prove and
// release its verified mapping while its pages keep leaving the
// mapping's page tables (each time, some read verifies it again): every
// answer has the needle's bytes, a Ref never proves its bytes once its
// pages left the mapping after it was answered (every other read waits
// for such a departure, then asks), and every hold is given back.
func TestRefStillVerifiedConcurrent(t *testing.T) {
	ps := newPins(t, 16)
	v, dir, all := osVolumeWith(t, 1, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	n := largeNeedles(all)[0]
	e, _ := v.Locate(n.Key, n.Size)
	defer lockRangeInPageCache(t, DatPath(dir, 3), e.Offset, int(e.Length))()
	readPinnedOnce(t, v, n)
	p := pinOf(t, v, n)
	if p == nil {
		t.Fatal("no verified mapping after a read")
	}

	const readers, reads = 4, 300
	var wg sync.WaitGroup
	errs := make(chan error, readers+1)
	stop := make(chan struct{})
	// started counts the pages' departures begun, done those finished: a
	// departure counted in done after a reader read started began after
	// that reading.
	var started, done atomic.Int64
	var broke atomic.Bool // the departures stopped on an error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			started.Add(1)
			if err := unix.Madvise(p.data, unix.MADV_DONTNEED); err != nil {
				errs <- err
				broke.Store(true)
				return
			}
			done.Add(1)
		}
	}()
	var readWG sync.WaitGroup
	for range readers {
		readWG.Add(1)
		go func() {
			defer readWG.Done()
			for i := range reads {
				ref, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil)
				if err != nil || !bytes.Equal(ref.Needle.Data, n.Data) {
					errs <- fmt.Errorf("read: %v (bytes equal %v)", err, bytes.Equal(ref.Needle.Data, n.Data))
					return
				}
				if i%2 == 0 && ref.Mapped() {
					// Wait for a departure begun after the answer:
					// the pages it verified left the verified mapping
					// since, and whatever faulted them back in was a
					// later verification, which the Ref does not own.
					s := started.Load()
					for done.Load() <= s && !broke.Load() {
						runtime.Gosched()
					}
					if broke.Load() {
						ref.Release()
						return
					}
					if ref.StillVerified() {
						errs <- fmt.Errorf("a Ref of seq %d still proves its bytes after its pages left the mapping (seq now %d)", ref.seq, p.seq.Load())
						return
					}
				} else {
					ref.StillVerified() // races with the departures and reverifications (-race)
				}
				ref.Release()
				ref.Release()
			}
		}()
	}
	readWG.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if h := pinHolders(ps, p); h != 0 {
		t.Fatalf("after every Ref's release: %d holders, want 0", h)
	}
	checkHeld(t, ps)
	if st := ps.Stats(); st.Live != int64(st.Cached) || st.Hits+st.Reverified == 0 {
		t.Fatalf("after the readers: %+v, want every live mapping cached", st)
	}
	ref := readRef(t, v, n)
	defer ref.Release()
	if !ref.Mapped() || !ref.StillVerified() {
		t.Fatalf("a read after the churn: mapped %v, still verified %v; want both", ref.Mapped(), ref.StillVerified())
	}
}

// checkHeld fails the test when the cache's count of held cached
// mappings is not the number of cached mappings that have holders.
func checkHeld(t testing.TB, ps *Pins) {
	t.Helper()
	if err := heldErr(ps); err != nil {
		t.Fatal(err)
	}
}

// heldCount returns the cache's count of held cached mappings.
func heldCount(ps *Pins) int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.mu.held
}

// heldErr is checkHeld's check, for a goroutine of a test.
func heldErr(ps *Pins) error {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	n := 0
	for _, p := range ps.mu.byKey {
		if p.holders > 0 {
			n++
		}
	}
	if n != ps.mu.held {
		return fmt.Errorf("%d cached mappings held, counted %d", n, ps.mu.held)
	}
	return nil
}

// TestPinsLiveCap: Refs of many distinct large needles held at once
// never map more than liveCap verified mappings: beyond it a read is one
// pread into the buffer (not Mapped), with the needle's bytes, verified;
// releasing the Refs unmaps those held out of the cache, and a read then
// maps again.
func TestPinsLiveCap(t *testing.T) {
	const bound = 8
	limit := liveCap(bound)
	if limit != 9 {
		t.Fatalf("liveCap(%d) = %d, want 9", bound, limit)
	}
	ps := newPins(t, bound)
	v, _, all := osVolumeWith(t, 10, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	large := largeNeedles(all)
	if len(large) < 2*limit {
		t.Fatalf("%d large needles, want %d", len(large), 2*limit)
	}
	var refs []Ref
	defer func() {
		for i := range refs {
			refs[i].Release()
		}
	}()
	preads := v.Status().Preads
	for i, n := range large {
		ref := readRef(t, v, n)
		refs = append(refs, ref)
		st := ps.Stats()
		if st.Live > int64(limit) || st.Cached > bound {
			t.Fatalf("%d Refs held: %+v, want at most %d live, %d cached", i+1, st, limit, bound)
		}
		if want := i < limit; ref.Mapped() != want || !ref.StillVerified() {
			t.Fatalf("Ref %d of distinct needles held: mapped %v, still verified %v; want mapped %v, verified", i+1, ref.Mapped(), ref.StillVerified(), want)
		}
		checkHeld(t, ps)
	}
	if st := ps.Stats(); st.Live != int64(limit) || st.Cached != bound || st.Evicted != 0 {
		t.Fatalf("with %d Refs held: %+v, want %d live, %d cached, none evicted", len(large), st, limit, bound)
	}
	if got, want := v.Status().Preads-preads, int64(len(large)-limit); got != want {
		t.Fatalf("%d preads for the reads beyond the cap, want %d", got, want)
	}
	for i := range refs {
		refs[i].Release()
	}
	checkHeld(t, ps)
	if st := ps.Stats(); st.Live != bound || st.Cached != bound {
		t.Fatalf("after every release: %+v, want the %d cached mappings alone", st, bound)
	}
	// With the cap no longer reached, a needle read by a pread above is
	// mapped (evicting one that nobody holds).
	ref := readRef(t, v, large[len(large)-1])
	defer ref.Release()
	if st := ps.Stats(); !ref.Mapped() || st.Evicted != 1 || st.Live != bound {
		t.Fatalf("a read after the releases: mapped %v, %+v; want mapped, 1 eviction, %d live", ref.Mapped(), st, bound)
	}
}

// TestPinsLiveCapConcurrent: readers that each hold a few Refs of large
// needles at once, with a bound far under them, never find more than
// liveCap mappings live; every answer has the needle's bytes and proves
// them while held, the count of held cached mappings stays right, and
// every hold is given back (run with -race).
func TestPinsLiveCapConcurrent(t *testing.T) {
	const bound = 2
	ps := newPins(t, bound)
	v, _, all := osVolumeWith(t, 4, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	large := largeNeedles(all)
	limit := int64(liveCap(bound))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var held [2]Ref
			defer func() {
				for i := range held {
					held[i].Release()
				}
			}()
			for i := range 150 {
				slot := &held[i%len(held)]
				slot.Release()
				n := large[(g+i*(g+1))%len(large)]
				ref, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil)
				if err != nil {
					errs <- err
					return
				}
				*slot = ref
				if !bytes.Equal(ref.Needle.Data, n.Data) || !ref.StillVerified() {
					errs <- fmt.Errorf("read %d: bytes equal %v, still verified %v", i, bytes.Equal(ref.Needle.Data, n.Data), ref.StillVerified())
					return
				}
				if st := ps.Stats(); st.Live > limit || st.Cached > bound {
					errs <- fmt.Errorf("over the cap: %+v", st)
					return
				}
				if err := heldErr(ps); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkHeld(t, ps)
	if st, held := ps.Stats(), heldCount(ps); held != 0 || st.Live != int64(st.Cached) || st.Hits+st.Evicted == 0 {
		t.Fatalf("after every release: %d held, %+v; want none held, every live mapping cached", held, st)
	}
	t.Logf("%+v", ps.Stats())
}

// TestPinsFullOfHeldGivesUp: a fresh mapping offered to a cache whose
// every mapping is held is refused at once: nothing evicted, the CLOCK
// hand not moved (no scan); the mapping answers out of the cache, held by
// its Ref, and is unmapped at its release.
func TestPinsFullOfHeldGivesUp(t *testing.T) {
	ps := newPins(t, 3)
	v, _, all := osVolumeWith(t, 2, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	large := largeNeedles(all)
	var refs []Ref
	defer func() {
		for i := range refs {
			refs[i].Release()
		}
	}()
	for _, n := range large[:3] {
		refs = append(refs, readRef(t, v, n))
	}
	checkHeld(t, ps)
	ps.mu.Lock()
	hand := ps.mu.hand
	ps.mu.Unlock()
	if held := heldCount(ps); held != 3 {
		t.Fatalf("three Refs of three cached mappings: %d held, want 3", held)
	}
	out := readRef(t, v, large[3])
	refs = append(refs, out)
	ps.mu.Lock()
	after := ps.mu.hand
	ps.mu.Unlock()
	if st := ps.Stats(); !out.Mapped() || st.Evicted != 0 || st.Cached != 3 || st.Live != 4 || after != hand || pinOf(t, v, large[3]) != nil {
		t.Fatalf("a mapping offered to a cache of held ones: mapped %v, %+v, hand %d then %d; want it mapped out of the cache, nothing evicted, the hand still", out.Mapped(), st, hand, after)
	}
	checkHeld(t, ps)
	for i := range refs {
		refs[i].Release()
	}
	checkHeld(t, ps)
	if st := ps.Stats(); st.Live != 3 || st.Cached != 3 {
		t.Fatalf("after the releases: %+v, want the three cached mappings alone", st)
	}
}

// TestRefCopyOutProvesAfterCopy: CopyOut asks its proof after the copy, so
// a verified mapping that loses its pages while the copy is made (here,
// just after it) is refused: asked before the copy, the proof would have
// passed and the copy, made after the pages left, been served.
func TestRefCopyOutProvesAfterCopy(t *testing.T) {
	ps := newPins(t, 16)
	v, dir, all := osVolumeWith(t, 1, Options{FS: vfs.Default, Pins: ps})
	defer v.Close()
	n := largeNeedles(all)[0]
	path := DatPath(dir, 3)
	calls := 0
	afterCopyOut = func(r *Ref) {
		calls++
		evictPin(t, r.pin, path, false)
	}
	t.Cleanup(func() { afterCopyOut = nil })
	ref := readRef(t, v, n)
	if !ref.Mapped() || !ref.StillVerified() {
		t.Fatalf("just read: mapped %v, still verified %v; want both", ref.Mapped(), ref.StillVerified())
	}
	p := ref.pin
	if _, err := ref.CopyOut(nil); !errors.Is(err, errNotVerified) || calls != 1 {
		t.Fatalf("the verified mapping lost its pages during the copy: %v (hook called %d times), want %v", err, calls, errNotVerified)
	}
	if ref.Mapped() || ref.Needle.Data != nil || pinHolders(ps, p) != 0 {
		t.Fatalf("after a refused CopyOut: mapped %v, data %d bytes, %d holders; want all released", ref.Mapped(), len(ref.Needle.Data), pinHolders(ps, p))
	}
	checkHeld(t, ps)
}
