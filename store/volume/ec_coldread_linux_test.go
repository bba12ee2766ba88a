package volume

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/needle"
)

// preadCold makes c's read as a caller's ring would, with one pread, and
// finishes it.
func preadCold(t *testing.T, c *ECColdRead) (needle.Needle, []byte, error) {
	t.Helper()
	got, err := unix.Pread(c.FD, c.Buf, c.Off)
	if err != nil {
		t.Fatalf("pread of the planned read: %v", err)
	}
	return c.Finish(got, nil)
}

// TestECStartColdRead: a cold needle of an EC volume that lies in one
// segment of a local shard is planned as the one read ECVolume.Read makes
// of it (direct under ECOptions.Direct's policy for MapMin bytes or more,
// buffered otherwise), reads its segment's pages and no more from storage,
// and Finish answers the needle Read answers, counted as Read counts it; a
// needle on two segments is left to Read, having taken nothing. Every
// buffer of the direct-read pool is free afterwards.
func TestECStartColdRead(t *testing.T) {
	for _, mode := range []string{"buffered", "direct"} {
		t.Run(mode, func(t *testing.T) {
			var opts ECOptions
			if mode == "direct" {
				opts.Direct = NewDirectReads(0)
			}
			e, dir, all := osECVolume(t, 6, opts)
			one, two, direct := 0, 0, 0
			for _, n := range all {
				en, _ := e.Locate(n.Key, n.Size)
				segs := e.geo.segments(en.Offset, en.Length, nil)
				dropShards(t, dir)
				st0, io0 := e.Status(), readIOCounters(t, ECShardPath(dir, 3, 0))
				c, buf, ok, err := e.StartColdRead(n.Key, n.Cookie, n.Size, nil)
				if err != nil {
					t.Fatalf("key %x size %v: %v", n.Key, n.Size, err)
				}
				if len(segs) != 1 {
					two++
					if ok {
						t.Fatalf("key %x size %v on %d segments: planned as one read", n.Key, n.Size, len(segs))
					}
					continue
				}
				one++
				if !ok {
					t.Fatalf("key %x size %v on one segment of a local shard: not planned", n.Key, n.Size)
				}
				got, _, err := preadCold(t, &c)
				io1, st1 := readIOCounters(t, ECShardPath(dir, 3, 0)), e.Status()
				if err != nil || !bytes.Equal(got.Data, n.Data) || got.Checksum != n.Checksum {
					t.Fatalf("key %x size %v: %v, or wrong bytes or checksum", n.Key, n.Size, err)
				}
				if len(buf) < en.Length && mode == "buffered" {
					t.Fatalf("key %x size %v: a buffer of %d bytes for a buffered read of %d", n.Key, n.Size, len(buf), en.Length)
				}
				wantDirect := int64(0)
				if mode == "direct" && en.Length >= MapMin {
					wantDirect = 1
					direct++
				}
				if st1.Preads-st0.Preads != 1 || st1.Reads-st0.Reads != 1 || st1.DirectReads-st0.DirectReads != wantDirect || st1.Degraded != st0.Degraded {
					t.Fatalf("key %x size %v (%d bytes): %+v then %+v; want one read, one pread, %d direct", n.Key, n.Size, en.Length, st0, st1, wantDirect)
				}
				if span := pageSpan(ECHeaderSize+segs[0].off, segs[0].n); io1.readBytes-io0.readBytes > span+metadataSlack {
					t.Errorf("key %x size %v: %d bytes read from storage for %d bytes of segment pages", n.Key, n.Size, io1.readBytes-io0.readBytes, span)
				}
			}
			if one == 0 || two == 0 || (mode == "direct" && direct == 0) {
				t.Fatalf("%d needles on one segment (%d direct), %d on two: want some of each", one, direct, two)
			}
			if e.opts.Direct != nil {
				if mapped, free, lent := poolState(e.opts.Direct.bufs); lent != 0 || free != mapped {
					t.Fatalf("pool: %d of %d buffers free, %d lent", free, mapped, lent)
				}
			}
		})
	}
}

// TestECStartColdReadRefusals: a missing needle or a wrong cookie is not
// found; a read the caller's ring refused, a failed or short read, and
// bytes damaged on the shard all finish with ErrWouldBlock, serving
// nothing, and Read then answers the needle (rebuilt from the other shards
// where its shard is damaged); an abandoned read gives its buffer back.
// A closed volume plans nothing.
func TestECStartColdReadRefusals(t *testing.T) {
	e, dir, all := osECVolume(t, 4, ECOptions{Direct: NewDirectReads(0)})
	pool := e.opts.Direct.bufs
	freeAll := func(what string) {
		t.Helper()
		if mapped, free, lent := poolState(pool); lent != 0 || free != mapped {
			t.Fatalf("%s: %d of %d buffers free, %d lent", what, free, mapped, lent)
		}
	}
	var n *needle.Needle
	var seg ecSegment
	for _, c := range all {
		en, _ := e.Locate(c.Key, c.Size)
		if segs := e.geo.segments(en.Offset, en.Length, nil); len(segs) == 1 && en.Length >= MapMin {
			n, seg = c, segs[0]
			break
		}
	}
	if n == nil {
		t.Fatal("no needle of MapMin bytes or more on one segment")
	}
	if _, _, _, err := e.StartColdRead(999, 1, needle.SizeThumb, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing key: %v, want ErrNotFound", err)
	}
	c, _, ok, err := e.StartColdRead(n.Key, n.Cookie+1, n.Size, nil)
	if !ok || err != nil {
		t.Fatalf("wrong cookie: planned %v, %v", ok, err)
	}
	if _, _, err := preadCold(t, &c); !errors.Is(err, ErrNotFound) {
		t.Fatalf("wrong cookie: %v, want ErrNotFound", err)
	}
	freeAll("after a wrong cookie")

	for _, tc := range []struct {
		name string
		got  int
		err  error
	}{
		{"refused by the ring", 0, syscall.EAGAIN},
		{"failed", 0, syscall.EIO},
		{"short", 100, nil},
	} {
		dropShards(t, dir)
		c, _, ok, err := e.StartColdRead(n.Key, n.Cookie, n.Size, nil)
		if !ok || err != nil {
			t.Fatalf("%s: planned %v, %v", tc.name, ok, err)
		}
		if got, _, err := c.Finish(tc.got, tc.err); !errors.Is(err, ErrWouldBlock) || got.Data != nil {
			t.Fatalf("%s: %v and %d bytes, want ErrWouldBlock and none", tc.name, err, len(got.Data))
		}
		freeAll(tc.name)
	}
	c, _, ok, err = e.StartColdRead(n.Key, n.Cookie, n.Size, nil)
	if !ok || err != nil {
		t.Fatalf("abandoned: planned %v, %v", ok, err)
	}
	c.Abandon()
	freeAll("abandoned")

	// Damage on the needle's shard: the loop's read does not verify, and
	// Read rebuilds the needle from the other shards.
	flipByte(t, ECShardPath(dir, 3, seg.shard), ECHeaderSize+seg.off+needle.HeaderSize+10)
	for range 2 { // direct, then buffered
		dropShards(t, dir)
		st0 := e.Status()
		c, _, ok, err := e.StartColdRead(n.Key, n.Cookie, n.Size, nil)
		if !ok || err != nil {
			t.Fatalf("damaged: planned %v, %v", ok, err)
		}
		if got, _, err := preadCold(t, &c); !errors.Is(err, ErrWouldBlock) || got.Data != nil {
			t.Fatalf("damaged: %v and %d bytes, want ErrWouldBlock and none", err, len(got.Data))
		}
		got, _, err := e.Read(context.Background(), n.Key, n.Cookie, n.Size, nil)
		if err != nil || !bytes.Equal(got.Data, n.Data) || got.Checksum != n.Checksum {
			t.Fatalf("damaged, then Read: %v, or wrong bytes", err)
		}
		if st := e.Status(); st.Degraded-st0.Degraded != 1 {
			t.Fatalf("damaged: %d degraded reads, want 1", st.Degraded-st0.Degraded)
		}
	}
	freeAll("after the damaged needle")

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, err := e.StartColdRead(n.Key, n.Cookie, n.Size, nil); ok || !errors.Is(err, ErrClosed) {
		t.Fatalf("closed: planned %v, %v; want ErrClosed", ok, err)
	}
}
