package volume

import (
	"bytes"
	"context"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// osECVolume writes photos photos on the operating system's file system,
// encodes the volume into EC files in its directory (blocks of 1 MiB, so
// that some needles straddle two) and opens them with opts. It returns the
// EC volume, its directory and every needle as written, with the checksum
// the plain volume read it with.
func osECVolume(t *testing.T, photos int, opts ECOptions) (*ECVolume, string, []*needle.Needle) {
	t.Helper()
	v, dir, all := osVolume(t, photos)
	for _, n := range all {
		got, _, err := v.Read(n.Key, n.Cookie, n.Size, nil)
		if err != nil {
			t.Fatal(err)
		}
		n.Checksum = got.Checksum // the ETag the plain volume answers with
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := EncodeECFile(context.Background(), DatPath(dir, 3), dir, Options{FS: vfs.Default}, ECEncodeOptions{}); err != nil {
		t.Fatal(err)
	}
	opts.FS = vfs.Default
	e, err := OpenEC(context.Background(), dir, 3, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, dir, all
}

// dropShards drops every shard of the EC volume in dir from the page cache.
func dropShards(t *testing.T, dir string) {
	t.Helper()
	for i := 0; i < ECShards; i++ {
		dropCache(t, ECShardPath(dir, 3, i))
	}
}

// ecCold is what one read of an EC needle cost: the change of the volume's
// counters and the bytes read from storage.
type ecCold struct {
	preads, direct, coldBuffered, degraded int64
	read                                   int64
}

// readECCold reads n from e (dropping the shards first when drop is set)
// and checks its bytes and checksum (the ETag) against the plain volume's.
func readECCold(t *testing.T, e *ECVolume, dir string, n *needle.Needle, drop bool) ecCold {
	t.Helper()
	if drop {
		dropShards(t, dir)
	}
	st0, c0 := e.Status(), readIOCounters(t, ECShardPath(dir, 3, 0))
	got, _, err := e.Read(context.Background(), n.Key, n.Cookie, n.Size, nil)
	c1, st1 := readIOCounters(t, ECShardPath(dir, 3, 0)), e.Status()
	if err != nil {
		t.Fatalf("key %x size %v: %v", n.Key, n.Size, err)
	}
	if !bytes.Equal(got.Data, n.Data) || got.Checksum != n.Checksum {
		t.Fatalf("key %x size %v: wrong bytes or checksum", n.Key, n.Size)
	}
	return ecCold{
		preads: st1.Preads - st0.Preads, direct: st1.DirectReads - st0.DirectReads,
		coldBuffered: st1.ColdBufferedReads - st0.ColdBufferedReads, degraded: st1.Degraded - st0.Degraded,
		read: c1.readBytes - c0.readBytes,
	}
}

// TestECDirectColdRead: with ECOptions.Direct, a cold needle of MapMin
// bytes or more of an EC volume is read with one direct pread per shard
// segment, reading no more than the segments' pages from storage and
// leaving none of them in the page cache, with the checksum (ETag) of the
// plain volume's; read cold again within the window, buffered, and then
// resident; smaller needles and resident ones read buffered. Every buffer
// of the pool is free afterwards.
func TestECDirectColdRead(t *testing.T) {
	e, dir, all := osECVolume(t, 6, ECOptions{Direct: NewDirectReads(0)})
	if st := e.Status(); st.DirectOff != "" || len(st.Local) != ECShards {
		t.Fatalf("direct off: %q, %d local shards", st.DirectOff, len(st.Local))
	}
	var large []*needle.Needle
	straddling := 0
	for _, n := range all {
		en, _ := e.Locate(n.Key, n.Size)
		segs := e.geo.segments(en.Offset, en.Length, nil)
		if en.Length < MapMin {
			if c := readECCold(t, e, dir, n, true); c.preads != int64(len(segs)) || c.direct != 0 || c.coldBuffered != 0 {
				t.Fatalf("cold key %x size %v (under MapMin): %+v; want %d buffered preads", n.Key, n.Size, c, len(segs))
			}
			continue
		}
		large = append(large, n)
		if len(segs) > 1 {
			straddling++
		}
		c := readECCold(t, e, dir, n, true)
		if c.preads != int64(len(segs)) || c.direct != 1 || c.coldBuffered != 0 || c.degraded != 0 {
			t.Fatalf("cold key %x size %v on %d segments: %+v; want one direct pread per segment", n.Key, n.Size, len(segs), c)
		}
		var span int64
		for _, s := range segs {
			path := ECShardPath(dir, 3, s.shard)
			if in, _ := residentPages(t, path, ECHeaderSize+s.off, s.n); in != 0 {
				t.Fatalf("cold key %x size %v: %d pages of shard %d resident after a direct read, want none", n.Key, n.Size, in, s.shard)
			}
			span += pageSpan(ECHeaderSize+s.off, s.n)
		}
		if c.read > span+metadataSlack {
			t.Errorf("cold key %x size %v: %d bytes read from storage for %d bytes of segment pages", n.Key, n.Size, c.read, span)
		}
	}
	if len(large) == 0 || straddling == 0 {
		t.Fatalf("%d large needles, %d straddling a block: want some of each", len(large), straddling)
	}
	for _, n := range large {
		en, _ := e.Locate(n.Key, n.Size)
		segs := e.geo.segments(en.Offset, en.Length, nil)
		if c := readECCold(t, e, dir, n, true); c.direct != 0 || c.coldBuffered != 1 || c.preads != int64(len(segs)) {
			t.Fatalf("second cold read of key %x size %v: %+v; want one buffered pread per segment", n.Key, n.Size, c)
		}
		for _, s := range segs {
			if in, pages := residentPages(t, ECShardPath(dir, 3, s.shard), ECHeaderSize+s.off, s.n); in != pages {
				t.Fatalf("second cold read of key %x size %v: %d of %d pages of shard %d resident, want all", n.Key, n.Size, in, pages, s.shard)
			}
		}
		// Resident now (its pages locked there).
		var unlocks []func()
		for _, s := range segs {
			unlocks = append(unlocks, lockRangeInPageCache(t, ECShardPath(dir, 3, s.shard), ECHeaderSize+s.off, s.n))
		}
		c := readECCold(t, e, dir, n, false)
		for _, unlock := range unlocks {
			unlock()
		}
		if c.direct != 0 || c.coldBuffered != 0 || c.read != 0 {
			t.Fatalf("resident key %x size %v: %+v; want buffered, nothing from storage", n.Key, n.Size, c)
		}
	}
	if mapped, free, lent := poolState(e.opts.Direct.bufs); lent != 0 || free != mapped || mapped == 0 {
		t.Fatalf("pool: %d of %d buffers free, %d lent", free, mapped, lent)
	}
}

// TestECDirectReadDamage: a damaged data shard under a cold needle read
// direct is found by the checksum and the needle's bytes rebuilt from the
// other shards, with the same checksum; a shard cut short fails its direct
// read and is rebuilt around too.
func TestECDirectReadDamage(t *testing.T) {
	e, dir, all := osECVolume(t, 6, ECOptions{Direct: NewDirectReads(0)})
	var large []*needle.Needle
	for _, n := range all {
		if en, _ := e.Locate(n.Key, n.Size); en.Length >= MapMin {
			large = append(large, n)
		}
	}
	n := large[0]
	en, _ := e.Locate(n.Key, n.Size)
	s := e.geo.segments(en.Offset, en.Length, nil)[0]
	flipByte(t, ECShardPath(dir, 3, s.shard), ECHeaderSize+s.off+int64(s.n/2))
	if c := readECCold(t, e, dir, n, true); c.direct != 1 || c.degraded != 1 {
		t.Fatalf("damaged shard %d: %+v; want a direct read, then a rebuild", s.shard, c)
	}

	// The last needle's first shard cut short: the direct read of its
	// segment fails, and the segment is rebuilt.
	var last *needle.Needle
	var lastOff int64 = -1
	for _, n := range large[1:] {
		if en, _ := e.Locate(n.Key, n.Size); en.Offset > lastOff {
			last, lastOff = n, en.Offset
		}
	}
	en, _ = e.Locate(last.Key, last.Size)
	s = e.geo.segments(en.Offset, en.Length, nil)[0]
	g, err := os.OpenFile(ECShardPath(dir, 3, s.shard), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.Truncate(ECHeaderSize + s.off + 10); err != nil {
		t.Fatal(err)
	}
	if c := readECCold(t, e, dir, last, true); c.direct != 1 || c.degraded != 1 {
		t.Fatalf("shard %d cut short: %+v; want a direct read, then a rebuild", s.shard, c)
	}
	if mapped, free, lent := poolState(e.opts.Direct.bufs); lent != 0 || free != mapped {
		t.Fatalf("pool: %d of %d buffers free, %d lent", free, mapped, lent)
	}
}

// TestECDirectRefused: where the file system refuses O_DIRECT the EC
// volume says why and reads buffered, correctly.
func TestECDirectRefused(t *testing.T) {
	orig := openDirect
	openDirect = func(vfs.File) (vfs.File, error) {
		return nil, &os.PathError{Op: "open O_DIRECT", Path: "shard", Err: syscall.EINVAL}
	}
	defer func() { openDirect = orig }()
	e, dir, all := osECVolume(t, 3, ECOptions{Direct: NewDirectReads(0)})
	if st := e.Status(); !strings.Contains(st.DirectOff, "invalid argument") {
		t.Fatalf("refused: direct off %q, want the reason", st.DirectOff)
	}
	for _, n := range all {
		en, _ := e.Locate(n.Key, n.Size)
		if c := readECCold(t, e, dir, n, true); c.direct != 0 || c.coldBuffered != 0 || c.preads != int64(len(e.geo.segments(en.Offset, en.Length, nil))) {
			t.Fatalf("refused, key %x size %v: %+v; want buffered preads, one per segment", n.Key, n.Size, c)
		}
	}
}

// TestECBufferedColdReadPages: without ECOptions.Direct, a cold needle of
// an EC volume, of any size, is read with one buffered pread per shard
// segment that reads its segments' pages from storage and no more (the
// descriptor needles are read from is POSIX_FADV_RANDOM: no readahead
// around them), with the plain volume's checksum.
func TestECBufferedColdReadPages(t *testing.T) {
	e, dir, all := osECVolume(t, 4, ECOptions{})
	if st := e.Status(); len(st.Local) != ECShards {
		t.Fatalf("%d local shards, want %d", len(st.Local), ECShards)
	}
	var read, span int64
	for _, n := range all {
		en, _ := e.Locate(n.Key, n.Size)
		segs := e.geo.segments(en.Offset, en.Length, nil)
		c := readECCold(t, e, dir, n, true)
		if c.preads != int64(len(segs)) || c.direct != 0 || c.coldBuffered != 0 || c.degraded != 0 {
			t.Fatalf("cold key %x size %v on %d segments: %+v; want one buffered pread per segment", n.Key, n.Size, len(segs), c)
		}
		var s int64
		for _, seg := range segs {
			s += pageSpan(ECHeaderSize+seg.off, seg.n)
		}
		if c.read > s+metadataSlack {
			t.Errorf("cold key %x size %v (%d bytes): %d bytes read from storage for %d bytes of segment pages", n.Key, n.Size, en.Length, c.read, s)
		}
		read += c.read
		span += s
	}
	t.Logf("%d bytes read from storage for %d bytes of segment pages", read, span)
}
