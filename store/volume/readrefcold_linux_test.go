package volume

import (
	"bytes"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// countTries counts the RWF_NOWAIT tries of the volume package until the
// test ends.
func countTries(t *testing.T) *atomic.Int64 {
	var n atomic.Int64
	orig := tryNoWait
	tryNoWait = func(fd int, b []byte, off int64) (int, error) {
		n.Add(1)
		return orig(fd, b, off)
	}
	t.Cleanup(func() { tryNoWait = orig })
	return &n
}

// withRing replaces the ring's reads until the test ends.
func withRing(t *testing.T, f func(fd int, b []byte, off int64) (int, bool, error)) {
	orig := ringPread
	ringPread = f
	t.Cleanup(func() { ringPread = orig })
}

// coldNeedles yields the needles of all whose pages are not all in the
// page cache once it is dropped (a neighbour's page the volume's mapping
// touched may stay), dropping it before each.
func coldNeedles(t *testing.T, v *Volume, path string, all []*needle.Needle, f func(n *needle.Needle, e Entry)) int {
	t.Helper()
	cold := 0
	for _, n := range all {
		dropCache(t, path)
		e, _ := v.Locate(n.Key, n.Size)
		if in, pages := residentPages(t, path, e.Offset, e.Length); in == pages {
			continue
		}
		cold++
		f(n, e)
	}
	if cold == 0 {
		t.Fatal("no needle left the page cache")
	}
	return cold
}

// TestReadRefColdOneTry: a needle the event loop's TryReadRef refused is
// read by ReadRefCold without a second RWF_NOWAIT try (ReadRef tried
// again, a system call that is refused anyway): one try in all, one
// pread counted, at most one read through the ring, the needle's own
// pages read from storage once, and its bytes verified. A read of a
// needle mincore already calls cold (MapMin bytes or more, read
// buffered) makes no try either, from ReadRef as from ReadRefCold.
func TestReadRefColdOneTry(t *testing.T) {
	v, dir, all := osVolume(t, 3)
	path := DatPath(dir, 3)
	tries := countTries(t)
	coldNeedles(t, v, path, all, func(n *needle.Needle, e Entry) {
		st0, c0, r0, t0 := v.Status(), readIOCounters(t, path), vfs.RingReads(), tries.Load()
		ref, _, err := v.TryReadRef(n.Key, n.Cookie, n.Size, nil)
		switch {
		case err == nil:
			// The try's pages arrived within the call (a fast device):
			// answered, nothing left to read.
			ref.Release()
			return
		case !errors.Is(err, ErrWouldBlock):
			t.Fatalf("key %x size %v cold: %v, want ErrWouldBlock", n.Key, n.Size, err)
		}
		if got := tries.Load() - t0; got != 1 {
			t.Fatalf("key %x size %v: TryReadRef made %d tries, want 1", n.Key, n.Size, got)
		}
		ref, _, err = v.ReadRefCold(n.Key, n.Cookie, n.Size, nil)
		if err != nil || !bytes.Equal(ref.Needle.Data, n.Data) || ref.Needle.Cookie != n.Cookie {
			t.Fatalf("key %x size %v: ReadRefCold after the refusal: %v", n.Key, n.Size, err)
		}
		if ref.Lent() {
			t.Fatalf("key %x size %v: a buffered read answered lent", n.Key, n.Size)
		}
		// The pages the refused try started reading may be in by now: a
		// needle of MapMin bytes or more is then verified in the mapping,
		// with no pread; any other is read with one.
		mapped := ref.Mapped()
		ref.Release()
		st, rr := v.Status(), vfs.RingReads()-r0
		if got := tries.Load() - t0; got != 1 {
			t.Fatalf("key %x size %v: %d RWF_NOWAIT tries for the refused read and the one after it, want 1", n.Key, n.Size, got)
		}
		want := int64(1)
		if mapped {
			want = 0
		}
		if st.Preads-st0.Preads != want || st.MappedReads-st0.MappedReads != 1-want || rr > want {
			t.Fatalf("key %x size %v (mapped %v): %d preads, %d mapped reads, %d reads through the ring; want %d, %d, at most %d", n.Key, n.Size, mapped, st.Preads-st0.Preads, st.MappedReads-st0.MappedReads, rr, want, 1-want, want)
		}
		if got := readIOCounters(t, path).readBytes - c0.readBytes; got > pageSpan(e.Offset, e.Length)+metadataSlack {
			t.Errorf("key %x size %v: %d bytes read from storage for %d bytes of pages", n.Key, n.Size, got, pageSpan(e.Offset, e.Length))
		}
	})
	// ReadRef of a needle mincore calls cold reads it without a try.
	large := 0
	coldNeedles(t, v, path, all, func(n *needle.Needle, e Entry) {
		if e.Length < MapMin {
			return
		}
		large++
		t0 := tries.Load()
		ref := readRef(t, v, n)
		ref.Release()
		if got := tries.Load() - t0; got != 0 {
			t.Fatalf("key %x size %v: ReadRef of a needle mincore calls cold made %d RWF_NOWAIT tries, want none", n.Key, n.Size, got)
		}
	})
	if large == 0 {
		t.Fatal("no needle of MapMin bytes or more left the page cache")
	}
	// In the page cache (locked there), ReadRefCold reads as ReadRef does.
	lockInPageCache(t, path)
	for _, n := range all {
		ref, _, err := v.ReadRefCold(n.Key, n.Cookie, n.Size, nil)
		if err != nil || !bytes.Equal(ref.Needle.Data, n.Data) {
			t.Fatalf("key %x size %v in the page cache: ReadRefCold: %v", n.Key, n.Size, err)
		}
		ref.Release()
	}
}

// TestReadRefColdWithoutRing: where the process has no ring (or the ring
// refuses the read), ReadRefCold reads with pread, once; where the ring's
// read fails or comes back short, the error is returned and no bytes are
// served; a needle damaged on the disk is never served.
func TestReadRefColdWithoutRing(t *testing.T) {
	v, dir, all := osVolume(t, 2)
	path := DatPath(dir, 3)
	var ringCalls atomic.Int64
	withRing(t, func(int, []byte, int64) (int, bool, error) {
		ringCalls.Add(1)
		return 0, false, nil
	})
	coldNeedles(t, v, path, all, func(n *needle.Needle, e Entry) {
		st0, c0 := v.Status(), ringCalls.Load()
		ref, _, err := v.ReadRefCold(n.Key, n.Cookie, n.Size, nil)
		if err != nil || !bytes.Equal(ref.Needle.Data, n.Data) {
			t.Fatalf("key %x size %v without a ring: %v", n.Key, n.Size, err)
		}
		ref.Release()
		if v.Status().Preads-st0.Preads != 1 || ringCalls.Load()-c0 != 1 {
			t.Fatalf("key %x size %v without a ring: %d preads, %d ring calls; want 1 and 1", n.Key, n.Size, v.Status().Preads-st0.Preads, ringCalls.Load()-c0)
		}
	})

	withRing(t, func(int, []byte, int64) (int, bool, error) { return 0, true, syscall.EIO })
	coldNeedles(t, v, path, all, func(n *needle.Needle, e Entry) {
		ref, _, err := v.ReadRefCold(n.Key, n.Cookie, n.Size, nil)
		if !errors.Is(err, syscall.EIO) || ref.Needle.Data != nil {
			t.Fatalf("key %x size %v, the ring's read failing: %v, %d bytes; want EIO and none", n.Key, n.Size, err, len(ref.Needle.Data))
		}
	})
	// A ring read that ends early (the file shorter than the index says)
	// is corruption, not a short answer.
	withRing(t, func(int, []byte, int64) (int, bool, error) { return 0, true, nil })
	coldNeedles(t, v, path, all, func(n *needle.Needle, e Entry) {
		ref, _, err := v.ReadRefCold(n.Key, n.Cookie, n.Size, nil)
		if !IsCorruption(err) || ref.Needle.Data != nil {
			t.Fatalf("key %x size %v, the ring's read ending early: %v, %d bytes; want corruption and none", n.Key, n.Size, err, len(ref.Needle.Data))
		}
	})

	// Damage on the disk, read through the real ring.
	withRing(t, vfs.RingPread)
	n := all[0]
	e, _ := v.Locate(n.Key, n.Size)
	flipByte(t, path, e.Offset+needle.HeaderSize+int64(len(n.Data))/2)
	dropCache(t, path)
	ref, _, err := v.ReadRefCold(n.Key, n.Cookie, n.Size, nil)
	if !IsCorruption(err) || ref.Needle.Data != nil {
		t.Fatalf("damaged key %x size %v: %v, %d bytes; want corruption and none", n.Key, n.Size, err, len(ref.Needle.Data))
	}
}
