package volume

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/internal/vfs/errorfs"
	"github.com/haybale/haybale/needle"
)

// Tiny blocks for tests: a few large rows (40 KiB each), then small rows
// of 5 KiB, so needles straddle blocks often and both kinds of row exist.
var testECBlocks = ECEncodeOptions{LargeBlock: 4096, SmallBlock: 512}

const ecVid = 7

// ecFixture is a sealed volume and what its live needles must read as.
type ecFixture struct {
	fs      *vfs.MemFS
	live    []*needle.Needle // every live needle, with its checksum
	raw     map[[2]uint64][]byte
	deleted []*needle.Needle // needles deleted before sealing
	datSize int64
}

func liveKey(key uint64, size needle.SizeCode) [2]uint64 { return [2]uint64{key, uint64(size)} }

// sealedVolume builds volume ecVid in a fresh MemFS: photos with random
// sizes (seeded), a few deleted, marked read-only and compacted (sealed).
func sealedVolume(t testing.TB, seed uint64, photos int) *ecFixture {
	t.Helper()
	fs := memFS(t)
	v := create(t, fs, ecVid, Options{})
	r := rand.New(rand.NewPCG(seed, 14))
	var all []*needle.Needle
	for k := 1; k <= photos; k++ {
		cookie := r.Uint64()
		var batch []*needle.Needle
		for _, size := range needle.PhotoSizes {
			data := make([]byte, 50+r.IntN(1500*(int(size)+1)))
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			batch = append(batch, &needle.Needle{Key: uint64(k), Cookie: cookie, Size: size, ContentType: needle.TypeJPEG, Data: data})
		}
		mustWrite(t, v, batch)
		all = append(all, batch...)
	}
	f := &ecFixture{fs: fs, raw: map[[2]uint64][]byte{}}
	ctx := context.Background()
	for k := 3; k <= photos; k += 7 {
		n := all[(k-1)*4]
		if _, err := v.Delete(ctx, n.Key, n.Cookie, needle.SizeAll); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.MarkReadOnly(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Compact(ctx, CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range all {
		got, _, err := v.Read(n.Key, n.Cookie, n.Size, nil)
		if errors.Is(err, ErrNotFound) {
			f.deleted = append(f.deleted, n)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		e, _ := v.Locate(n.Key, n.Size)
		raw := make([]byte, e.Length)
		if _, err := v.dat.ReadAt(raw, e.Offset); err != nil {
			t.Fatal(err)
		}
		f.raw[liveKey(n.Key, n.Size)] = raw
		c := got
		c.Data = slices.Clone(got.Data)
		f.live = append(f.live, &c)
	}
	f.datSize = v.Status().Size
	if s, _ := v.State(); s != StateSealed {
		t.Fatalf("state %v, want sealed", s)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *ecFixture) encode(t testing.TB, fs vfs.FS) ECEncodeResult {
	t.Helper()
	res, err := EncodeECFile(context.Background(), DatPath(testDir, ecVid), testDir, Options{FS: fs}, testECBlocks)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func openEC(t testing.TB, fs vfs.FS) *ECVolume {
	t.Helper()
	e, err := OpenEC(context.Background(), testDir, ecVid, ECOptions{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// expectECReads checks that every live needle reads byte-identical.
func (f *ecFixture) expectECReads(t testing.TB, e *ECVolume) {
	t.Helper()
	for _, want := range f.live {
		got, _, err := e.Read(context.Background(), want.Key, want.Cookie, want.Size, nil)
		if err != nil {
			t.Fatalf("read key %x size %v: %v", want.Key, want.Size, err)
		}
		if !bytes.Equal(got.Data, want.Data) || got.Checksum != want.Checksum || got.AppendTime != want.AppendTime {
			t.Fatalf("key %x size %v: read differs from the original", want.Key, want.Size)
		}
	}
}

func TestECGeometry(t *testing.T) {
	g := ecGeometry{dataSize: 10*4096*2 + 3*512 + 5, large: 4096, small: 512}
	if g.largeRows() != 2 || g.smallRows() != 1 {
		t.Fatalf("rows %d large, %d small", g.largeRows(), g.smallRows())
	}
	if g.shardSize() != 2*4096+512 {
		t.Fatalf("shard size %d", g.shardSize())
	}
	// Every stream byte maps to exactly one (shard, offset), and the map
	// is the one the layout table documents.
	seen := map[[2]int64]bool{}
	for off := int64(0); off < g.dataSize; off += 7 {
		segs := g.segments(off, 1, nil)
		if len(segs) != 1 {
			t.Fatalf("offset %d: %d segments", off, len(segs))
		}
		s := segs[0]
		var want [2]int64
		if off < 2*40960 {
			r, in := off/40960, off%40960
			want = [2]int64{in / 4096, r*4096 + in%4096}
		} else {
			in := off - 2*40960
			want = [2]int64{in / 512, 2*4096 + in%512}
		}
		if got := [2]int64{int64(s.shard), s.off}; got != want {
			t.Fatalf("offset %d: got shard/offset %v, want %v", off, got, want)
		}
		if seen[want] {
			t.Fatalf("offset %d maps to a used place %v", off, want)
		}
		seen[want] = true
	}
	// A range across a large-to-small boundary splits at every block.
	segs := g.segments(2*40960-100, 700, nil)
	if len(segs) != 3 || segs[0].n != 100 || segs[1].n != 512 || segs[2].n != 88 {
		t.Fatalf("segments %+v", segs)
	}
}

func TestECEncodeReadDelete(t *testing.T) {
	f := sealedVolume(t, 1, 30)
	res := f.encode(t, f.fs)
	if res.LargeRows == 0 || res.SmallRows == 0 || res.Straddling == 0 || res.Needles != len(f.live) {
		t.Fatalf("encode result %+v: want both kinds of rows, straddling needles and %d needles", res, len(f.live))
	}
	for i := 0; i < ECShards; i++ {
		st, err := f.fs.Stat(ECShardPath(testDir, ecVid, i))
		if err != nil || st.Size() != res.ShardSize {
			t.Fatalf("shard %d: %v, size %v want %d", i, err, st, res.ShardSize)
		}
	}
	e := openEC(t, f.fs)
	f.expectECReads(t, e)
	st := e.Status()
	if st.Degraded != 0 || st.Straddling == 0 || st.Preads != int64(len(f.live))+st.Straddling+countMulti(e) {
		t.Fatalf("status %+v: healthy reads must cost one pread per block touched", st)
	}
	for _, n := range f.deleted {
		if _, _, err := e.Read(context.Background(), n.Key, n.Cookie, n.Size, nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted key %x: %v", n.Key, err)
		}
	}
	// A wrong cookie reads like a missing image and cannot delete.
	n := f.live[5]
	if _, _, err := e.Read(context.Background(), n.Key, n.Cookie+1, n.Size, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("wrong cookie: %v", err)
	}
	if _, err := e.Delete(context.Background(), n.Key, n.Cookie+1, needle.SizeAll); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete with wrong cookie: %v", err)
	}
	// Deletes are journaled and survive a reopen (and a power cut).
	freed, err := e.Delete(context.Background(), n.Key, n.Cookie, needle.SizeAll)
	if err != nil || freed == 0 {
		t.Fatalf("delete: %d, %v", freed, err)
	}
	n2 := f.live[len(f.live)-1]
	if _, err := e.Delete(context.Background(), n2.Key, n2.Cookie, n2.Size); err != nil {
		t.Fatal(err)
	}
	crashed := f.fs.CrashClone()
	e2 := openEC(t, crashed)
	for _, d := range []*needle.Needle{n, n2} {
		if _, _, err := e2.Read(context.Background(), d.Key, d.Cookie, d.Size, nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted key %x size %v after a crash: %v", d.Key, d.Size, err)
		}
	}
	if got := e2.Status().Deletes; got != 2 {
		t.Fatalf("journal holds %d deletes, want 2", got)
	}
	// A torn journal record (a delete never acknowledged) is cut off.
	j, _ := crashed.OpenReadWrite(ECJournalPath(testDir, ecVid))
	size, _ := j.Size()
	j.WriteAt([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9}, size)
	j.Sync()
	j.Close()
	e2.Close()
	e3 := openEC(t, crashed)
	if got := e3.Status().Deletes; got != 2 {
		t.Fatalf("after a torn record the journal holds %d deletes, want 2", got)
	}
	if st, _ := crashed.Stat(ECJournalPath(testDir, ecVid)); st.Size() != size {
		t.Fatalf("torn record not cut: journal is %d bytes, want %d", st.Size(), size)
	}
}

// countMulti returns how many extra preads straddling needles beyond two
// blocks cost (needles spanning three or more blocks).
func countMulti(e *ECVolume) int64 {
	var extra int64
	e.Entries(func(en Entry) bool {
		if s := len(e.geo.segments(en.Offset, en.Length, nil)); s > 2 {
			extra += int64(s - 2)
		}
		return true
	})
	return extra
}

// withLost runs fn with the shards in lost unavailable.
func withLost(e *ECVolume, lost []int, fn func()) {
	saved := e.shards
	for _, i := range lost {
		e.shards[i] = nil
	}
	defer func() { e.shards = saved }()
	fn()
}

// combinations calls fn with every k-subset of 0..n-1.
func combinations(n, k int, fn func([]int)) {
	c := make([]int, k)
	var rec func(start, depth int)
	rec = func(start, depth int) {
		if depth == k {
			fn(c)
			return
		}
		for i := start; i <= n-(k-depth); i++ {
			c[depth] = i
			rec(i+1, depth+1)
		}
	}
	rec(0, 0)
}

func TestECSurvivesAnyFourLost(t *testing.T) {
	f := sealedVolume(t, 2, 16)
	f.encode(t, f.fs)
	e := openEC(t, f.fs)
	combos := 0
	var buf []byte
	combinations(ECShards, 4, func(lost []int) {
		combos++
		withLost(e, lost, func() {
			for _, want := range f.live {
				var got needle.Needle
				var err error
				got, buf, err = e.Read(context.Background(), want.Key, want.Cookie, want.Size, buf)
				if err != nil {
					t.Fatalf("lost %v: key %x size %v: %v", lost, want.Key, want.Size, err)
				}
				raw := f.raw[liveKey(want.Key, want.Size)]
				if !bytes.Equal(buf, raw) || !bytes.Equal(got.Data, want.Data) {
					t.Fatalf("lost %v: key %x size %v reads different bytes", lost, want.Key, want.Size)
				}
			}
		})
	})
	if combos != 1001 {
		t.Fatalf("%d combinations, want 1001", combos)
	}
	if e.Status().Degraded == 0 {
		t.Fatal("no read was degraded")
	}
}

func TestECFiveLostIsUnrecoverableExactlyWhereHit(t *testing.T) {
	f := sealedVolume(t, 3, 16)
	f.encode(t, f.fs)
	e := openEC(t, f.fs)
	combos, readable, lostReads := 0, 0, 0
	combinations(ECShards, 5, func(lost []int) {
		combos++
		withLost(e, lost, func() {
			for _, want := range f.live {
				en, _ := e.Locate(want.Key, want.Size)
				hit := false
				for _, s := range e.geo.segments(en.Offset, en.Length, nil) {
					hit = hit || slices.Contains(lost, s.shard)
				}
				got, _, err := e.Read(context.Background(), want.Key, want.Cookie, want.Size, nil)
				switch {
				case hit && !errors.Is(err, ErrUnrecoverable):
					t.Fatalf("lost %v: key %x size %v lies on a lost data shard but read gave %v", lost, want.Key, want.Size, err)
				case !hit && err != nil:
					t.Fatalf("lost %v: key %x size %v: %v", lost, want.Key, want.Size, err)
				case !hit && !bytes.Equal(got.Data, want.Data):
					t.Fatalf("lost %v: key %x size %v reads different bytes", lost, want.Key, want.Size)
				case hit:
					lostReads++
				default:
					readable++
				}
			}
		})
	})
	if combos != 2002 || readable == 0 || lostReads == 0 {
		t.Fatalf("%d combinations, %d readable, %d unrecoverable", combos, readable, lostReads)
	}
}

func TestECReadsAroundDamagedShard(t *testing.T) {
	f := sealedVolume(t, 4, 12)
	f.encode(t, f.fs)
	// Flip bytes all over data shard 0's data area: reads of its needles
	// fail their checksum and are rebuilt from the other shards.
	sh, err := f.fs.OpenReadWrite(ECShardPath(testDir, ecVid, 0))
	if err != nil {
		t.Fatal(err)
	}
	size, _ := sh.Size()
	for off := int64(ECHeaderSize); off < size; off += 97 {
		sh.WriteAt([]byte{0xA5}, off)
	}
	sh.Sync()
	sh.Close()
	e := openEC(t, f.fs)
	f.expectECReads(t, e)
	if e.Status().Degraded == 0 {
		t.Fatal("no read was rebuilt around the damaged shard")
	}
	// The damaged shard on top of any three lost ones: still every needle.
	combinations(ECShards-1, 3, func(c []int) {
		lost := make([]int, 3)
		for k, i := range c {
			lost[k] = i + 1
		}
		withLost(e, lost, func() { f.expectECReads(t, e) })
	})
	e.Close()

	rep, err := VerifyEC(context.Background(), testDir, ecVid, ECFilesOptions{FS: f.fs})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Damaged, []int{0}) || len(rep.Missing) != 0 || rep.Unreadable != 0 || rep.Healthy() {
		t.Fatalf("verify: %+v, want shard 0 damaged and every needle readable", rep)
	}
	rebuilt, err := RebuildEC(context.Background(), testDir, ecVid, rep.Damaged, ECFilesOptions{FS: f.fs})
	if err != nil || !slices.Equal(rebuilt, []int{0}) {
		t.Fatalf("rebuild: %v, %v", rebuilt, err)
	}
	rep, err = VerifyEC(context.Background(), testDir, ecVid, ECFilesOptions{FS: f.fs})
	if err != nil || !rep.Healthy() {
		t.Fatalf("verify after rebuild: %+v, %v", rep, err)
	}
}

func TestECRebuildRestoresLostShards(t *testing.T) {
	f := sealedVolume(t, 5, 16)
	f.encode(t, f.fs)
	orig := map[int][]byte{}
	for _, i := range []int{1, 6, 11, 13} {
		orig[i] = readWhole(t, f.fs, ECShardPath(testDir, ecVid, i))
		if err := f.fs.Remove(ECShardPath(testDir, ecVid, i)); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := VerifyEC(context.Background(), testDir, ecVid, ECFilesOptions{FS: f.fs})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Missing, []int{1, 6, 11, 13}) || !rep.Recoverable() || rep.Unreadable != 0 {
		t.Fatalf("verify: %+v", rep)
	}
	rebuilt, err := RebuildEC(context.Background(), testDir, ecVid, nil, ECFilesOptions{FS: f.fs})
	if err != nil || len(rebuilt) != 4 {
		t.Fatalf("rebuild: %v, %v", rebuilt, err)
	}
	for i, want := range orig {
		if got := readWhole(t, f.fs, ECShardPath(testDir, ecVid, i)); !bytes.Equal(got, want) {
			t.Fatalf("rebuilt shard %d differs from the original", i)
		}
	}
	// Five lost: rebuild refuses, verify says unrecoverable.
	for _, i := range []int{0, 2, 4, 8, 12} {
		f.fs.Remove(ECShardPath(testDir, ecVid, i))
	}
	if _, err := RebuildEC(context.Background(), testDir, ecVid, nil, ECFilesOptions{FS: f.fs}); !errors.Is(err, ErrUnrecoverable) {
		t.Fatalf("rebuild of 5 lost shards: %v", err)
	}
	rep, err = VerifyEC(context.Background(), testDir, ecVid, ECFilesOptions{FS: f.fs})
	if err != nil || rep.Recoverable() || rep.Unreadable == 0 {
		t.Fatalf("verify with 5 lost: %+v, %v", rep, err)
	}
}

func readWhole(t testing.TB, fs vfs.FS, path string) []byte {
	t.Helper()
	f, err := fs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, _ := f.Size()
	b := make([]byte, size)
	if err := readFull(f, b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestECDecode(t *testing.T) {
	f := sealedVolume(t, 6, 20)
	f.encode(t, f.fs)
	orig := readWhole(t, f.fs, DatPath(testDir, ecVid))
	// Lose two data shards: decode rebuilds their bytes.
	f.fs.Remove(ECShardPath(testDir, ecVid, 0))
	f.fs.Remove(ECShardPath(testDir, ecVid, 3))
	out := filepath.Join("/out", "7.dat")
	res, err := DecodeEC(context.Background(), testDir, ecVid, out, ECFilesOptions{FS: f.fs})
	if err != nil {
		t.Fatal(err)
	}
	got := readWhole(t, f.fs, out)
	// Byte-identical but for the superblock, which has the next generation.
	if !bytes.Equal(got[SuperblockSize:], orig[SuperblockSize:]) {
		t.Fatal("decoded needles differ from the original's")
	}
	sbOld, _ := DecodeSuperblock(orig)
	sbNew, err := DecodeSuperblock(got)
	if err != nil || sbNew.Generation != sbOld.Generation+1 || sbNew.Vid != ecVid || res.Images != len(f.live) {
		t.Fatalf("decoded superblock %+v (%v), result %+v", sbNew, err, res)
	}
	v, err := Open(context.Background(), "/out", ecVid, Options{FS: f.fs})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if s, _ := v.State(); s != StateSealed {
		t.Fatalf("decoded volume is %v, want sealed", s)
	}
	for _, want := range f.live {
		expectRead(t, v, want)
	}
	if _, err := DecodeEC(context.Background(), testDir, ecVid, out, ECFilesOptions{FS: f.fs}); !errors.Is(err, ErrExists) {
		t.Fatalf("decode over an existing file: %v", err)
	}
}

func TestECDecodeRepairsDamagedShard(t *testing.T) {
	f := sealedVolume(t, 15, 10)
	f.encode(t, f.fs)
	orig := readWhole(t, f.fs, DatPath(testDir, ecVid))
	sh, _ := f.fs.OpenReadWrite(ECShardPath(testDir, ecVid, 1))
	size, _ := sh.Size()
	for off := int64(ECHeaderSize); off < size; off += 61 {
		sh.WriteAt([]byte{0x5A}, off)
	}
	sh.Close()
	if _, err := DecodeEC(context.Background(), testDir, ecVid, "/out/7.dat", ECFilesOptions{FS: f.fs}); err != nil {
		t.Fatal(err)
	}
	got := readWhole(t, f.fs, "/out/7.dat")
	v, err := Open(context.Background(), "/out", ecVid, Options{FS: f.fs})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for _, want := range f.live {
		expectRead(t, v, want)
		e, _ := v.Locate(want.Key, want.Size)
		if !bytes.Equal(got[e.Offset:e.Offset+int64(e.Length)], orig[e.Offset:e.Offset+int64(e.Length)]) {
			t.Fatalf("key %x size %v: decoded bytes differ", want.Key, want.Size)
		}
	}
	// Five shards lost: decode fails and writes nothing.
	for _, i := range []int{0, 2, 3, 4, 5} {
		f.fs.Remove(ECShardPath(testDir, ecVid, i))
	}
	if _, err := DecodeEC(context.Background(), testDir, ecVid, "/out2/7.dat", ECFilesOptions{FS: f.fs}); !errors.Is(err, ErrUnrecoverable) {
		t.Fatalf("decode with 5 shards lost: %v", err)
	}
	if _, err := f.fs.Stat("/out2/7.dat"); err == nil {
		t.Fatal("a failed decode left its output")
	}
}

func TestECDecodeAppliesJournal(t *testing.T) {
	f := sealedVolume(t, 8, 20)
	f.encode(t, f.fs)
	e := openEC(t, f.fs)
	deleted := map[[2]uint64]bool{}
	for i, n := range f.live {
		if i%5 != 0 {
			continue
		}
		if _, err := e.Delete(context.Background(), n.Key, n.Cookie, n.Size); err != nil {
			t.Fatal(err)
		}
		deleted[liveKey(n.Key, n.Size)] = true
	}
	e.Close()
	out := "/out/7.dat"
	res, err := DecodeEC(context.Background(), testDir, ecVid, out, ECFilesOptions{FS: f.fs})
	if err != nil {
		t.Fatal(err)
	}
	if res.Deletes != len(deleted) || res.Reclaimed <= 0 {
		t.Fatalf("decode result %+v: want %d deletes applied and space reclaimed", res, len(deleted))
	}
	v, err := Open(context.Background(), "/out", ecVid, Options{FS: f.fs})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.Check(); err != nil {
		t.Fatal(err)
	}
	for _, n := range f.live {
		got, _, err := v.Read(n.Key, n.Cookie, n.Size, nil)
		if deleted[liveKey(n.Key, n.Size)] {
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("deleted key %x size %v: %v", n.Key, n.Size, err)
			}
			continue
		}
		if err != nil || !bytes.Equal(got.Data, n.Data) || got.AppendTime != n.AppendTime {
			t.Fatalf("key %x size %v: %v", n.Key, n.Size, err)
		}
	}
	if v.Status().Images != len(f.live)-len(deleted) {
		t.Fatalf("%d images, want %d", v.Status().Images, len(f.live)-len(deleted))
	}
}

func TestECOpenRejectsDamagedIndex(t *testing.T) {
	f := sealedVolume(t, 9, 6)
	f.encode(t, f.fs)
	ecx, _ := f.fs.OpenReadWrite(ECIndexPath(testDir, ecVid))
	ecx.WriteAt([]byte{0xFF}, ECHeaderSize+idxRecordSize+3)
	ecx.Close()
	if _, err := OpenEC(context.Background(), testDir, ecVid, ECOptions{FS: f.fs}); !IsCorruption(err) {
		t.Fatalf("open with a damaged ecx record: %v", err)
	}
	ecx, _ = f.fs.OpenReadWrite(ECIndexPath(testDir, ecVid))
	ecx.WriteAt([]byte{0xFF}, 20)
	ecx.Close()
	if _, err := OpenEC(context.Background(), testDir, ecVid, ECOptions{FS: f.fs}); !errors.Is(err, ErrNotEC) {
		t.Fatalf("open with a damaged ecx header: %v", err)
	}
}

func TestECEncodeRefusesWritableAndExisting(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 3, Options{})
	defer v.Close()
	if _, err := v.EncodeEC(context.Background(), testDir, testECBlocks); !errors.Is(err, ErrNotSealed) {
		t.Fatalf("encode of a writable volume: %v", err)
	}
	f := sealedVolume(t, 10, 4)
	f.encode(t, f.fs)
	if _, err := EncodeECFile(context.Background(), DatPath(testDir, ecVid), testDir, Options{FS: f.fs}, testECBlocks); !errors.Is(err, ErrExists) {
		t.Fatalf("second encode: %v", err)
	}
	if _, err := EncodeECFile(context.Background(), DatPath(testDir, ecVid), "/other", Options{FS: f.fs}, ECEncodeOptions{LargeBlock: 100, SmallBlock: 200}); err == nil {
		t.Fatal("encode with a large block under the small one succeeded")
	}
}

// crashAfter returns an FS over base whose mutating operations fail with
// EIO once n of them have run: a power cut after step n.
func crashAfter(base vfs.FS, n int) vfs.FS {
	return errorfs.Wrap(base, errorfs.After(n, errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpCreate, errorfs.OpRemove, errorfs.OpRename, errorfs.OpMkdir, errorfs.OpSyncDir,
			errorfs.OpWrite, errorfs.OpSync, errorfs.OpTruncate:
			return syscall.EIO
		}
		return nil
	})))
}

// mutations counts the mutating operations fn performs on an FS over base.
func mutations(base vfs.FS, fn func(vfs.FS)) int {
	var c errorfs.Counter
	fn(errorfs.Wrap(base, &c))
	n := 0
	for _, k := range []errorfs.OpKind{errorfs.OpCreate, errorfs.OpRemove, errorfs.OpRename, errorfs.OpMkdir,
		errorfs.OpSyncDir, errorfs.OpWrite, errorfs.OpSync, errorfs.OpTruncate} {
		n += int(c.Count(k))
	}
	return n
}

// expectOneForm checks that a crashed file system holds the volume fully
// readable as a .dat or as a complete EC volume.
func (f *ecFixture) expectOneForm(t *testing.T, fs *vfs.MemFS, step int) {
	t.Helper()
	ctx := context.Background()
	if _, err := fs.Stat(ECIndexPath(testDir, ecVid)); err == nil {
		e, err := OpenEC(ctx, testDir, ecVid, ECOptions{FS: fs})
		if err != nil {
			t.Fatalf("step %d: ecx present but EC volume does not open: %v", step, err)
		}
		defer e.Close()
		if st := e.Status(); len(st.Local) != ECShards {
			t.Fatalf("step %d: committed EC volume has shards %v (%v)", step, st.Local, st.Damaged)
		}
		f.expectECReads(t, e)
		return
	}
	v, err := Open(ctx, testDir, ecVid, Options{FS: fs})
	if err != nil {
		t.Fatalf("step %d: neither form opens: %v", step, err)
	}
	defer v.Close()
	for _, want := range f.live {
		expectRead(t, v, want)
	}
}

func TestECEncodeCrashAtEveryStep(t *testing.T) {
	f := sealedVolume(t, 11, 6)
	base := f.fs.CrashClone()
	total := mutations(base.CrashClone(), func(fs vfs.FS) {
		if _, err := EncodeECFile(context.Background(), DatPath(testDir, ecVid), testDir, Options{FS: fs}, testECBlocks); err != nil {
			t.Fatal(err)
		}
	})
	for step := 0; step <= total; step++ {
		mem := base.CrashClone()
		_, err := EncodeECFile(context.Background(), DatPath(testDir, ecVid), testDir, Options{FS: crashAfter(mem, step)}, testECBlocks)
		if step == total && err != nil {
			t.Fatalf("encode with every step allowed: %v", err)
		}
		f.expectOneForm(t, mem.CrashClone(), step)
	}
}

func TestECRebuildCrashAtEveryStep(t *testing.T) {
	f := sealedVolume(t, 12, 6)
	f.encode(t, f.fs)
	for _, i := range []int{2, 12} {
		f.fs.Remove(ECShardPath(testDir, ecVid, i))
	}
	f.fs.SyncDir(testDir)
	base := f.fs.CrashClone()
	total := mutations(base.CrashClone(), func(fs vfs.FS) {
		if _, err := RebuildEC(context.Background(), testDir, ecVid, nil, ECFilesOptions{FS: fs}); err != nil {
			t.Fatal(err)
		}
	})
	for step := 0; step <= total; step++ {
		mem := base.CrashClone()
		RebuildEC(context.Background(), testDir, ecVid, nil, ECFilesOptions{FS: crashAfter(mem, step)})
		crashed := mem.CrashClone()
		e, err := OpenEC(context.Background(), testDir, ecVid, ECOptions{FS: crashed})
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		st := e.Status()
		if len(st.Damaged) != 0 || len(st.Local) < 12 {
			t.Fatalf("step %d: shards %v, damaged %v", step, st.Local, st.Damaged)
		}
		if step == total && len(st.Local) != ECShards {
			t.Fatalf("finished rebuild left shards %v", st.Local)
		}
		f.expectECReads(t, e)
		e.Close()
	}
}

func TestECDecodeCrashAtEveryStep(t *testing.T) {
	f := sealedVolume(t, 13, 5)
	f.encode(t, f.fs)
	e := openEC(t, f.fs)
	if _, err := e.Delete(context.Background(), f.live[0].Key, f.live[0].Cookie, f.live[0].Size); err != nil {
		t.Fatal(err)
	}
	e.Close()
	f.live = f.live[1:]
	base := f.fs.CrashClone()
	out := "/data/decoded/7.dat"
	total := mutations(base.CrashClone(), func(fs vfs.FS) {
		if _, err := DecodeEC(context.Background(), testDir, ecVid, out, ECFilesOptions{FS: fs}); err != nil {
			t.Fatal(err)
		}
	})
	for step := 0; step <= total; step += max(1, total/150) {
		mem := base.CrashClone()
		DecodeEC(context.Background(), testDir, ecVid, out, ECFilesOptions{FS: crashAfter(mem, step)})
		crashed := mem.CrashClone()
		// The EC form is untouched.
		e, err := OpenEC(context.Background(), testDir, ecVid, ECOptions{FS: crashed})
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		f.expectECReads(t, e)
		e.Close()
		// The decoded volume is there whole, or not at all.
		if _, err := crashed.Stat(out); err != nil {
			continue
		}
		v, err := Open(context.Background(), filepath.Dir(out), ecVid, Options{FS: crashed})
		if err != nil {
			t.Fatalf("step %d: decoded volume: %v", step, err)
		}
		for _, want := range f.live {
			got, _, err := v.Read(want.Key, want.Cookie, want.Size, nil)
			if err != nil || !bytes.Equal(got.Data, want.Data) {
				t.Fatalf("step %d: decoded key %x size %v: %v", step, want.Key, want.Size, err)
			}
		}
		v.Close()
	}
}

func TestECHeaderRoundTrip(t *testing.T) {
	g := ecGeometry{vid: 9, generation: 2, dataSize: 12345, large: 4096, small: 512}
	copy(g.super[:], (&Superblock{Version: FormatVersion, Vid: 9, Generation: 2, Created: 5, Secret: [SecretSize]byte{1, 2, 3, 4, 5, 6, 7, 8}}).encode())
	b := encodeECHeader(ecShardMagic, &g, 13)
	got, field, err := decodeECHeader(b, ecShardMagic)
	if err != nil || field != 13 || !sameGeometry(&got, &g) {
		t.Fatalf("round trip: %+v %d %v", got, field, err)
	}
	if _, _, err := decodeECHeader(b, ecxMagic); !errors.Is(err, ErrNotEC) {
		t.Fatalf("wrong magic: %v", err)
	}
	for _, pos := range []int{9, 20, 30, 48, 70, 124} {
		c := slices.Clone(b)
		c[pos] ^= 1
		if _, _, err := decodeECHeader(c, ecShardMagic); err == nil {
			t.Fatalf("flipped byte %d accepted", pos)
		}
	}
	bad := g
	bad.small = 0
	if _, _, err := decodeECHeader(encodeECHeader(ecShardMagic, &bad, 0), ecShardMagic); !errors.Is(err, ErrNotEC) {
		t.Fatalf("zero block size: %v", err)
	}
}

func TestResolveEC(t *testing.T) {
	ctx := context.Background()
	f := sealedVolume(t, 14, 6)
	if form, err := ResolveEC(f.fs, testDir, ecVid); form != FormDat || err != nil {
		t.Fatalf("plain volume: %v %v", form, err)
	}
	// Shards without an ecx: an encode that never committed.
	f.encode(t, f.fs)
	encoded := f.fs.CrashClone()
	f.fs.Remove(ECIndexPath(testDir, ecVid))
	if form, err := ResolveEC(f.fs, testDir, ecVid); form != FormDat || err != nil {
		t.Fatalf("uncommitted encode: %v %v", form, err)
	}
	if _, err := f.fs.Stat(ECShardPath(testDir, ecVid, 3)); err == nil {
		t.Fatal("leftover shard not removed")
	}
	// Both forms after an encode: the EC form wins.
	if form, err := ResolveEC(encoded, testDir, ecVid); form != FormEC || err != nil {
		t.Fatalf("committed encode: %v %v", form, err)
	}
	if _, err := encoded.Stat(DatPath(testDir, ecVid)); err == nil {
		t.Fatal(".dat kept beside a committed encode")
	}
	f.expectOneForm(t, encoded, 0)
	// Both forms after a decode (newer generation): the .dat wins.
	if _, err := DecodeEC(ctx, testDir, ecVid, DatPath(testDir, ecVid), ECFilesOptions{FS: encoded}); err != nil {
		t.Fatal(err)
	}
	if form, err := ResolveEC(encoded, testDir, ecVid); form != FormDat || err != nil {
		t.Fatalf("committed decode: %v %v", form, err)
	}
	if _, err := encoded.Stat(ECIndexPath(testDir, ecVid)); err == nil {
		t.Fatal("ecx kept beside a committed decode")
	}
	f.expectOneForm(t, encoded, 0)
}

func TestECRetiresTheReplacedForm(t *testing.T) {
	ctx := context.Background()
	f := sealedVolume(t, 16, 6)
	v := reopen(t, f.fs, ecVid)
	defer v.Close()
	n := f.live[0]
	if _, err := v.EncodeEC(ctx, "/warm", ECEncodeOptions{LargeBlock: 4096, SmallBlock: 512}); err == nil {
		t.Fatal("encode into a missing folder succeeded")
	}
	f.fs.MkdirAll("/warm", 0o755)
	if _, err := v.EncodeEC(ctx, "/warm", testECBlocks); err != nil {
		t.Fatal(err)
	}
	// Without Retire the volume goes on taking deletes.
	if _, err := v.Delete(ctx, n.Key, n.Cookie, n.Size); err != nil {
		t.Fatalf("delete after a plain encode: %v", err)
	}
	opts := testECBlocks
	opts.Retire = true
	if _, err := v.EncodeEC(ctx, testDir, opts); err != nil {
		t.Fatal(err)
	}
	m := f.live[1]
	if _, err := v.Delete(ctx, m.Key, m.Cookie, m.Size); !errors.Is(err, ErrClosed) {
		t.Fatalf("delete after a retiring encode: %v", err)
	}
	expectRead(t, v, m)

	e := openEC(t, f.fs)
	if _, err := e.DecodeTo(ctx, "/out/7.dat", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Delete(ctx, m.Key, m.Cookie, m.Size); !errors.Is(err, ErrClosed) {
		t.Fatalf("delete on a decoded EC volume: %v", err)
	}
	if _, _, err := e.Read(ctx, m.Key, m.Cookie, m.Size, nil); err != nil {
		t.Fatalf("read on a decoded EC volume: %v", err)
	}
}

func TestResolveECKeepsDatBesideDamagedIndex(t *testing.T) {
	f := sealedVolume(t, 17, 4)
	f.encode(t, f.fs)
	ecx, _ := f.fs.OpenReadWrite(ECIndexPath(testDir, ecVid))
	ecx.WriteAt([]byte{0xEE}, 30)
	ecx.Close()
	if form, err := ResolveEC(f.fs, testDir, ecVid); form != FormDat || err != nil {
		t.Fatalf("damaged ecx beside a .dat: %v %v", form, err)
	}
	if _, err := f.fs.Stat(DatPath(testDir, ecVid)); err != nil {
		t.Fatal(err)
	}
}
