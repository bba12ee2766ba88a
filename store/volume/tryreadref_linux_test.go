package volume

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/haybale/haybale/needle"
)

// TestTryReadRef: a needle in the page cache is read by TryReadRef as by
// ReadRef (from the mapping, or with one pread that does not wait); a
// needle not in it is refused with ErrWouldBlock, having counted no read,
// and ReadRef then reads it from storage once: the pages the refused
// read asked the kernel for and the read that waited for them add up to
// the needle's own pages, not twice as many. (A try whose pages arrive
// within the call, as on a fast device, reads them once and succeeds.) With direct reads, a cold
// needle of MapMin bytes or more is refused before anything is asked of
// the kernel.
func TestTryReadRef(t *testing.T) {
	t.Run("buffered", func(t *testing.T) {
		v, dir, all := osVolume(t, 3)
		testTryReadRef(t, v, DatPath(dir, 3), all, false)
	})
	t.Run("direct", func(t *testing.T) {
		v, dir, all := directVolume(t, 3, 0, Options{})
		testTryReadRef(t, v, DatPath(dir, 3), all, true)
	})
}

// mustRefuse says at least one try is certain to be refused: with direct
// reads, a cold needle of MapMin bytes or more is refused before the
// kernel is asked; a buffered try may always win the race with the disk.
func testTryReadRef(t *testing.T, v *Volume, path string, all []*needle.Needle, mustRefuse bool) {
	page := int64(os.Getpagesize())
	refused := 0
	for _, n := range all {
		dropCache(t, path)
		e, _ := v.Locate(n.Key, n.Size)
		if in, pages := residentPages(t, path, e.Offset, e.Length); in == pages {
			// Its pages stay cached, held by the volume's mapping where
			// a read touched a neighbour sharing a page: nothing to wait
			// for.
			continue
		}
		st0, c0 := v.Status(), readIOCounters(t, path)
		ref, _, err := v.TryReadRef(n.Key, n.Cookie, n.Size, nil)
		span := (e.Offset+int64(e.Length)+page-1)&^(page-1) - e.Offset&^(page-1)
		if err == nil {
			// RWF_NOWAIT starts reading the missing pages before it
			// refuses, and on a fast device they can be in before the
			// kernel looks again: the read then succeeds within the call,
			// having fetched the needle's pages once. That is still one
			// disk read and no wait on the loop; a second fetch, or
			// wrong bytes, is not.
			if !bytes.Equal(ref.Needle.Data, n.Data) {
				t.Fatalf("key %x size %v: TryReadRef answered other bytes", n.Key, n.Size)
			}
			ref.Release()
			if got := readIOCounters(t, path).readBytes - c0.readBytes; got > span+2*page {
				t.Fatalf("key %x size %v: %d bytes read from storage by TryReadRef for a needle spanning %d", n.Key, n.Size, got, span)
			}
			continue
		}
		if !errors.Is(err, ErrWouldBlock) {
			t.Fatalf("key %x size %v not in the page cache: %v, want ErrWouldBlock", n.Key, n.Size, err)
		}
		refused++
		if st := v.Status(); st.Preads != st0.Preads || st.MappedReads != st0.MappedReads || st.DirectReads != st0.DirectReads {
			t.Fatalf("key %x size %v: a refused read was counted: %+v then %+v", n.Key, n.Size, st0, st)
		}
		ref, _, err = v.ReadRef(n.Key, n.Cookie, n.Size, nil)
		if err != nil || !bytes.Equal(ref.Needle.Data, n.Data) {
			t.Fatalf("key %x size %v read after the refusal: err %v", n.Key, n.Size, err)
		}
		ref.Release()
		if got := readIOCounters(t, path).readBytes - c0.readBytes; got > span+2*page {
			t.Errorf("key %x size %v: %d bytes read from storage for a needle spanning %d", n.Key, n.Size, got, span)
		}
	}
	if mustRefuse && refused == 0 {
		t.Fatalf("none of %d needles out of the page cache was refused", len(all))
	}
	// All in the page cache (locked there): read as by ReadRef, and
	// counted once.
	lockInPageCache(t, path)
	for _, n := range all {
		st0 := v.Status()
		ref, _, err := v.TryReadRef(n.Key, n.Cookie, n.Size, nil)
		if err != nil || !bytes.Equal(ref.Needle.Data, n.Data) {
			t.Fatalf("key %x size %v in the page cache: err %v", n.Key, n.Size, err)
		}
		ref.Release()
		st1 := v.Status()
		if reads := st1.Preads - st0.Preads + st1.MappedReads - st0.MappedReads; reads != 1 {
			t.Fatalf("key %x size %v in the page cache: %d reads counted, want 1", n.Key, n.Size, reads)
		}
	}
}
