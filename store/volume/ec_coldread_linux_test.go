package volume

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// preadCold makes c's reads as a caller's ring would, with one pread
// each, and finishes it.
func preadCold(t *testing.T, c *ECColdRead) (needle.Needle, []byte, error) {
	t.Helper()
	var res []ReadResult
	for _, r := range c.Reads() {
		got, err := unix.Pread(r.FD, r.Buf, r.Off)
		if err != nil {
			t.Fatalf("pread of the planned read: %v", err)
		}
		res = append(res, ReadResult{N: got})
	}
	return c.Finish(res)
}

// TestECStartColdRead: a cold needle of an EC volume whose one or two
// segments lie on local shards is planned as the reads ECVolume.Read
// makes of it (one per segment, direct under ECOptions.Direct's policy
// for MapMin bytes or more, buffered otherwise), reads its segments'
// pages and no more from storage, and Finish answers the needle Read
// answers, byte for byte, counted as Read counts it (a pread per segment,
// a straddling read for two). Every buffer of the direct-read pool is
// free afterwards.
func TestECStartColdRead(t *testing.T) {
	for _, mode := range []string{"buffered", "direct"} {
		t.Run(mode, func(t *testing.T) {
			var opts ECOptions
			if mode == "direct" {
				opts.Direct = NewDirectReads(0)
			}
			e, dir, all := osECVolume(t, 6, opts)
			one, two, direct, twoDirect := 0, 0, 0, 0
			for _, n := range all {
				en, _ := e.Locate(n.Key, n.Size)
				segs := e.geo.segments(en.Offset, en.Length, nil)
				dropShards(t, dir)
				st0, io0 := e.Status(), readIOCounters(t, ECShardPath(dir, 3, 0))
				c, buf, ok, err := e.StartColdRead(n.Key, n.Cookie, n.Size, nil)
				if err != nil {
					t.Fatalf("key %x size %v: %v", n.Key, n.Size, err)
				}
				if len(segs) > ECColdReadMax {
					t.Fatalf("key %x size %v on %d segments: the test volume has needles on two at most", n.Key, n.Size, len(segs))
				}
				if !ok {
					t.Fatalf("key %x size %v on %d segments of local shards: not planned", n.Key, n.Size, len(segs))
				}
				if len(c.Reads()) != len(segs) {
					t.Fatalf("key %x size %v on %d segments: %d reads planned", n.Key, n.Size, len(segs), len(c.Reads()))
				}
				got, _, err := preadCold(t, &c)
				io1, st1 := readIOCounters(t, ECShardPath(dir, 3, 0)), e.Status()
				if err != nil || !bytes.Equal(got.Data, n.Data) || got.Checksum != n.Checksum {
					t.Fatalf("key %x size %v: %v, or wrong bytes or checksum", n.Key, n.Size, err)
				}
				if r, _, err := e.Read(context.Background(), n.Key, n.Cookie, n.Size, nil); err != nil || !bytes.Equal(got.Data, r.Data) || got.Checksum != r.Checksum || got.ContentType != r.ContentType {
					t.Fatalf("key %x size %v: not the needle Read answers (%v)", n.Key, n.Size, err)
				}
				if len(buf) < en.Length && mode == "buffered" {
					t.Fatalf("key %x size %v: a buffer of %d bytes for a buffered read of %d", n.Key, n.Size, len(buf), en.Length)
				}
				wantDirect, straddle := int64(0), int64(0)
				if mode == "direct" && en.Length >= MapMin {
					wantDirect = 1
					direct++
				}
				if len(segs) == 2 {
					straddle = 1
					two++
					twoDirect += int(wantDirect)
				} else {
					one++
				}
				if st1.Preads-st0.Preads != int64(len(segs)) || st1.Reads-st0.Reads != 1 || st1.DirectReads-st0.DirectReads != wantDirect || st1.Degraded != st0.Degraded || st1.Straddling-st0.Straddling != straddle {
					t.Fatalf("key %x size %v (%d bytes, %d segments): %+v then %+v; want one read, %d preads, %d direct", n.Key, n.Size, en.Length, len(segs), st0, st1, len(segs), wantDirect)
				}
				var span int64
				for _, s := range segs {
					span += pageSpan(ECHeaderSize+s.off, s.n)
				}
				if io1.readBytes-io0.readBytes > span+metadataSlack {
					t.Errorf("key %x size %v: %d bytes read from storage for %d bytes of segment pages", n.Key, n.Size, io1.readBytes-io0.readBytes, span)
				}
			}
			if one == 0 || two == 0 || (mode == "direct" && (direct == 0 || twoDirect == 0)) {
				t.Fatalf("%d needles on one segment, %d on two (%d and %d direct): want some of each", one, two, direct, twoDirect)
			}
			if e.opts.Direct != nil {
				if mapped, free, lent := poolState(e.opts.Direct.bufs); lent != 0 || free != mapped || e.opts.Direct.Lent() != 0 {
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
		if got, _, err := c.Finish([]ReadResult{{N: tc.got, Err: tc.err}}); !errors.Is(err, ErrWouldBlock) || got.Data != nil {
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
	checkDamagedRebuilt(t, e, dir, n)
	freeAll("after the damaged needle")

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, err := e.StartColdRead(n.Key, n.Cookie, n.Size, nil); ok || !errors.Is(err, ErrClosed) {
		t.Fatalf("closed: planned %v, %v; want ErrClosed", ok, err)
	}
}

// TestECStartColdReadTwoSegments: a needle over two segments whose second
// read is missing, refused by the caller's ring (the first made), failed
// or short finishes with ErrWouldBlock, serving nothing, and the policy's
// answer is taken back (Read, reading it cold instead, reads it direct or
// buffered as the planned reads would have); with its second segment damaged on its
// shard, the joined needle does not verify and Read rebuilds that segment
// from the other shards, serving the right bytes. No buffer of the pool is
// kept, or lent, after any of it.
func TestECStartColdReadTwoSegments(t *testing.T) {
	e, dir, all := osECVolume(t, 6, ECOptions{Direct: NewDirectReads(0)})
	pool := e.opts.Direct.bufs
	freeAll := func(what string) {
		t.Helper()
		if mapped, free, lent := poolState(pool); lent != 0 || free != mapped || e.opts.Direct.Lent() != 0 {
			t.Fatalf("%s: %d of %d buffers free, %d lent", what, free, mapped, lent)
		}
	}
	var n *needle.Needle
	var segs []ecSegment
	for _, c := range all {
		en, _ := e.Locate(c.Key, c.Size)
		if s := e.geo.segments(en.Offset, en.Length, nil); len(s) == 2 && en.Length >= MapMin && s[1].n > needle.HeaderSize+16 {
			n, segs = c, s
			break
		}
	}
	if n == nil {
		t.Fatal("no needle of MapMin bytes or more on two segments")
	}
	pread := func(r ECShardRead) ReadResult {
		got, err := unix.Pread(r.FD, r.Buf, r.Off)
		if err != nil {
			t.Fatalf("pread of the planned read: %v", err)
		}
		return ReadResult{N: got}
	}
	for _, tc := range []struct {
		name   string
		second func(ECShardRead) []ReadResult // the results after the first
	}{
		{"second missing", func(ECShardRead) []ReadResult { return nil }},
		{"second refused", func(ECShardRead) []ReadResult { return []ReadResult{{Err: vfs.ErrRingFull}} }},
		{"second failed", func(ECShardRead) []ReadResult { return []ReadResult{{Err: syscall.EIO}} }},
		{"second short", func(r ECShardRead) []ReadResult {
			got := pread(r)
			got.N = min(got.N, 100)
			return []ReadResult{got}
		}},
	} {
		dropShards(t, dir)
		c, _, ok, err := e.StartColdRead(n.Key, n.Cookie, n.Size, nil)
		if !ok || err != nil || len(c.Reads()) != 2 {
			t.Fatalf("%s: planned %v (%d reads), %v", tc.name, ok, len(c.Reads()), err)
		}
		reads, planned := c.Reads(), c.how
		res := append([]ReadResult{pread(reads[0])}, tc.second(reads[1])...)
		if got, _, err := c.Finish(res); !errors.Is(err, ErrWouldBlock) || got.Data != nil {
			t.Fatalf("%s: %v and %d bytes, want ErrWouldBlock and none", tc.name, err, len(got.Data))
		}
		freeAll(tc.name)
		c0 := readECCold(t, e, dir, n, true)
		if want := (ecCold{preads: 2, direct: b2i(planned == readDirect), coldBuffered: b2i(planned == readColdBuffered)}); c0.preads != want.preads || c0.direct != want.direct || c0.coldBuffered != want.coldBuffered || c0.degraded != 0 {
			t.Fatalf("%s, then Read: %+v; want %+v, as planned (the policy's answer taken back)", tc.name, c0, want)
		}
		freeAll(tc.name + ", then Read")
	}

	// Damage in the second segment: the joined needle does not verify,
	// and Read rebuilds the segment from the other shards.
	flipByte(t, ECShardPath(dir, 3, segs[1].shard), ECHeaderSize+segs[1].off+int64(segs[1].n)/2)
	checkDamagedRebuilt(t, e, dir, n)
	freeAll("after the damaged needle")
}

// b2i is 1 for true, 0 for false.
func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// checkDamagedRebuilt reads n, damaged on the shard its loop read takes,
// cold twice (direct, then buffered, as the policy alternates): the
// loop's read does not verify (ErrWouldBlock, no bytes), and Read then
// rebuilds the needle from the other shards, byte for byte, in one
// degraded read.
func checkDamagedRebuilt(t *testing.T, e *ECVolume, dir string, n *needle.Needle) {
	t.Helper()
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
}
