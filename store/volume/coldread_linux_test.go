package volume

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// ringRead makes c's read through lr, as an event loop does, and waits
// for its completion.
func ringRead(t *testing.T, lr *vfs.LoopRing, c *ColdRead) (int, error) {
	t.Helper()
	if err := lr.Read(c.FD, c.Buf, c.Off, 1); err != nil {
		t.Fatalf("submit: %v", err)
	}
	var got int
	var gerr error
	for done := false; !done; {
		fds := []unix.PollFd{{Fd: int32(lr.EventFD()), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, 60000); err != nil && err != unix.EINTR {
			t.Fatal(err)
		}
		lr.Reap(func(_ uint64, n int, err error) { got, gerr, done = n, err, true })
	}
	return got, gerr
}

// mapRefs is how many references the volume's current mapping has.
func mapRefs(v *Volume) int64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.mu.dmap.refs.Load()
}

// TestColdReadThroughLoopRing: a cold needle read by the caller through a
// ring of its own (StartColdRead, the ring's read, Finish) is answered as
// ReadRef answers it: the needle's bytes, verified; one pread counted
// (direct for a needle of MapMin bytes or more under the policy, lent the
// pool's buffer until Release; buffered for the rest, and for a large one
// read cold again within the window); the needle's own pages read from
// storage once. Nothing stays held: the mapping's references and the
// pool's buffers are as before.
func TestColdReadThroughLoopRing(t *testing.T) {
	lr, err := vfs.NewLoopRing(8)
	if err != nil {
		t.Skip(err)
	}
	defer lr.Close(func(uint64, int, error) {})
	for _, direct := range []bool{false, true} {
		var v *Volume
		var dir string
		var all []*needle.Needle
		if direct {
			v, dir, all = directVolume(t, 3, 0, Options{})
		} else {
			v, dir, all = osVolume(t, 3)
		}
		path := DatPath(dir, 3)
		refs0 := mapRefs(v)
		for round := range 2 {
			coldNeedles(t, v, path, all, func(n *needle.Needle, e Entry) {
				st0, c0 := v.Status(), readIOCounters(t, path)
				c, _, ok, err := v.StartColdRead(n.Key, n.Cookie, n.Size, nil)
				if err != nil || !ok {
					t.Fatalf("direct %v key %x size %v: StartColdRead: %v, %v", direct, n.Key, n.Size, ok, err)
				}
				got, rerr := ringRead(t, lr, &c)
				ref, _, err := c.Finish(got, rerr)
				if err != nil || !bytes.Equal(ref.Needle.Data, n.Data) || ref.Needle.Cookie != n.Cookie {
					t.Fatalf("direct %v key %x size %v: %v", direct, n.Key, n.Size, err)
				}
				st := v.Status()
				wantDirect := direct && round == 0 && e.Length >= MapMin
				if st.Preads-st0.Preads != 1 || (st.DirectReads-st0.DirectReads == 1) != wantDirect {
					t.Fatalf("direct %v round %d key %x size %v: %d preads, %d direct; want 1 and direct %v", direct, round, n.Key, n.Size, st.Preads-st0.Preads, st.DirectReads-st0.DirectReads, wantDirect)
				}
				if direct && round == 1 && e.Length >= MapMin && st.ColdBufferedReads-st0.ColdBufferedReads != 1 {
					t.Fatalf("key %x size %v read cold again within the window: not counted buffered by the policy", n.Key, n.Size)
				}
				if wantDirect && !ref.Lent() {
					t.Fatalf("key %x size %v read direct: not lent the pool's buffer", n.Key, n.Size)
				}
				if mapRefs(v) != refs0 {
					t.Fatalf("key %x size %v: the mapping has %d references after Finish, want %d", n.Key, n.Size, mapRefs(v), refs0)
				}
				ref.Release()
				if got := readIOCounters(t, path).readBytes - c0.readBytes; got > pageSpan(e.Offset, e.Length)+metadataSlack {
					t.Errorf("key %x size %v: %d bytes read from storage for %d bytes of pages", n.Key, n.Size, got, pageSpan(e.Offset, e.Length))
				}
			})
		}
		if d := v.opts.Direct; d != nil {
			if mapped, free, lent := poolState(d.bufs); lent != 0 || free != mapped {
				t.Fatalf("after the reads: %d of %d buffers free, %d lent", free, mapped, lent)
			}
		}
	}
}

// TestColdReadFailures: whatever the read comes back with, Finish never
// answers unverified bytes and gives back what the read held: an I/O
// error is an error; a read the ring refused (EINVAL, EOPNOTSUPP,
// EAGAIN) or a buffered read short of the needle is ErrWouldBlock (the
// caller reads it with ReadRefCold); a read ending at the end of the file
// before the needle does, or a needle damaged on the disk, is corruption;
// Abandon gives back a read not made. The mapping's references and the
// pool's buffers are as before after each.
func TestColdReadFailures(t *testing.T) {
	v, dir, all := directVolume(t, 2, 0, Options{})
	path := DatPath(dir, 3)
	pool := v.opts.Direct.bufs
	refs0 := mapRefs(v)
	var large, small *needle.Needle
	for _, n := range all {
		if e, _ := v.Locate(n.Key, n.Size); e.Length >= MapMin && large == nil {
			large = n
		} else if e.Length < MapMin && small == nil {
			small = n
		}
	}
	check := func(what string, n *needle.Needle, finish func(c *ColdRead) (Ref, error), want func(error) bool) {
		t.Helper()
		dropCache(t, path)
		for i := range v.opts.Direct.seen {
			v.opts.Direct.seen[i].Store(0) // a first cold read: the policy sends a large needle direct
		}
		c, _, ok, err := v.StartColdRead(n.Key, n.Cookie, n.Size, nil)
		if err != nil || !ok {
			t.Fatalf("%s: StartColdRead: %v, %v", what, ok, err)
		}
		if n == large && (!c.direct || c.slot == nil) {
			t.Fatalf("%s: the large needle planned direct %v, into a pool buffer %v; want both", what, c.direct, c.slot != nil)
		}
		ref, err := finish(&c)
		if !want(err) || ref.Needle.Data != nil || ref.Lent() {
			t.Fatalf("%s, key %x size %v: %v, %d bytes, lent %v", what, n.Key, n.Size, err, len(ref.Needle.Data), ref.Lent())
		}
		if mapped, free, lent := poolState(pool); lent != 0 || free != mapped {
			t.Fatalf("%s: %d of %d buffers free, %d lent", what, free, mapped, lent)
		}
		if mapRefs(v) != refs0 {
			t.Fatalf("%s: the mapping has %d references, want %d", what, mapRefs(v), refs0)
		}
	}
	isEIO := func(err error) bool { return errors.Is(err, syscall.EIO) && !IsCorruption(err) }
	wouldBlock := func(err error) bool { return errors.Is(err, ErrWouldBlock) }
	for _, n := range []*needle.Needle{large, small} {
		check("I/O error", n, func(c *ColdRead) (Ref, error) { r, _, err := c.Finish(0, syscall.EIO); return r, err }, isEIO)
		for _, e := range []syscall.Errno{syscall.EINVAL, syscall.EOPNOTSUPP, syscall.EAGAIN} {
			check("refused "+e.Error(), n, func(c *ColdRead) (Ref, error) { r, _, err := c.Finish(0, e); return r, err }, wouldBlock)
		}
		check("end of file", n, func(c *ColdRead) (Ref, error) { r, _, err := c.Finish(0, nil); return r, err }, IsCorruption)
		check("abandoned", n, func(c *ColdRead) (Ref, error) { c.Abandon(); return Ref{}, ErrWouldBlock }, wouldBlock)
	}
	// A buffered read short of the needle: the rest is ReadRefCold's.
	check("short buffered read", small, func(c *ColdRead) (Ref, error) {
		got, err := syscall.Pread(c.FD, c.Buf[:len(c.Buf)/2], c.Off)
		r, _, err := c.Finish(got, err)
		return r, err
	}, wouldBlock)

	// Damage on the disk, read for real, direct and buffered.
	for _, n := range []*needle.Needle{large, small} {
		e, _ := v.Locate(n.Key, n.Size)
		flipByte(t, path, e.Offset+needle.HeaderSize+int64(len(n.Data))/2)
		check("damaged", n, func(c *ColdRead) (Ref, error) {
			got, err := syscall.Pread(c.FD, c.Buf, c.Off)
			r, _, err := c.Finish(got, err)
			return r, err
		}, IsCorruption)
	}
}

// TestColdReadNotMadeKeepsPolicy: asking the direct-read policy records
// the needle, so a loop's read that is not made after all (abandoned, or
// refused by the ring) takes its answer back: the read made instead
// (ReadRefCold) gets the same answer, direct for a first cold read, and
// buffered for a needle read direct just before, rather than the
// opposite.
func TestColdReadNotMadeKeepsPolicy(t *testing.T) {
	v, dir, all := directVolume(t, 2, 0, Options{})
	path := DatPath(dir, 3)
	var large *needle.Needle
	for _, n := range all {
		if e, _ := v.Locate(n.Key, n.Size); e.Length >= MapMin {
			large = n
			break
		}
	}
	for _, notMade := range []struct {
		what string
		end  func(c *ColdRead)
	}{
		{"abandoned", func(c *ColdRead) { c.Abandon() }},
		{"refused by the ring", func(c *ColdRead) {
			if _, _, err := c.Finish(0, syscall.EAGAIN); !errors.Is(err, ErrWouldBlock) {
				t.Fatalf("a refused read: %v, want ErrWouldBlock", err)
			}
		}},
	} {
		for i := range v.opts.Direct.seen {
			v.opts.Direct.seen[i].Store(0)
		}
		// A first cold read: planned direct, not made; read direct.
		for round, wantDirect := range []bool{true, false} {
			dropCache(t, path)
			c, _, ok, err := v.StartColdRead(large.Key, large.Cookie, large.Size, nil)
			if err != nil || !ok || c.direct != wantDirect {
				t.Fatalf("%s, read %d: planned direct %v (%v, %v), want %v", notMade.what, round, c.direct, ok, err, wantDirect)
			}
			notMade.end(&c)
			st0 := v.Status()
			ref, _, err := v.ReadRefCold(large.Key, large.Cookie, large.Size, nil)
			if err != nil || !bytes.Equal(ref.Needle.Data, large.Data) {
				t.Fatalf("%s, read %d: %v", notMade.what, round, err)
			}
			ref.Release()
			st := v.Status()
			if got := st.DirectReads - st0.DirectReads; (got == 1) != wantDirect || st.ColdBufferedReads-st0.ColdBufferedReads+got != 1 {
				t.Fatalf("%s, read %d: %d direct, %d cold buffered; want direct %v", notMade.what, round, got, st.ColdBufferedReads-st0.ColdBufferedReads, wantDirect)
			}
		}
	}
}
