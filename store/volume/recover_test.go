package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// testBatch is one batch of a hand-built volume: data needles, or one
// tombstone.
type testBatch struct {
	needles []*needle.Needle
	offs    []int64 // where each needle landed
}

// buildDat encodes a volume file of the given format from batches, framed
// exactly as Write and Delete frame them, and records each needle's offset.
// Format 1 is how volumes written before format 2 look.
func buildDat(t testing.TB, sb Superblock, batches []*testBatch) []byte {
	t.Helper()
	format, err := sb.Format()
	if err != nil {
		t.Fatal(err)
	}
	b := sb.encode()
	for _, bt := range batches {
		bt.offs = nil
		for i, n := range bt.needles {
			n.Flags &^= needle.FlagBatchContinues
			if i < len(bt.needles)-1 {
				n.Flags |= needle.FlagBatchContinues
			}
			n.BatchStart = i == 0
			if n.AppendTime == 0 {
				n.AppendTime = 1_780_000_000_000_000_000
			}
			bt.offs = append(bt.offs, int64(len(b)))
			if b, err = format.Append(b, n); err != nil {
				t.Fatal(err)
			}
		}
	}
	return b
}

func superblockOf(version uint32, vid uint32) Superblock {
	sb := Superblock{Version: version, Vid: vid, Created: 1_780_000_000_000_000_000}
	if version >= needle.Version2 {
		sb.Secret = [SecretSize]byte{9, 8, 7, 6, 5, 4, 3, 2}
	}
	return sb
}

func dataBatch(key uint64, n int) *testBatch {
	if n == 4 {
		return &testBatch{needles: photo(key, key*3)}
	}
	return &testBatch{needles: []*needle.Needle{{Key: key, Cookie: key * 3, Size: needle.SizeOriginal, ContentType: needle.TypePNG,
		Data: bytes.Repeat([]byte{byte(key), 0x5a}, 30+int(key%5))}}}
}

func tombstoneBatch(key uint64, size needle.SizeCode) *testBatch {
	return &testBatch{needles: []*needle.Needle{{Key: key, Cookie: key * 3, Size: size, Flags: needle.FlagTombstone}}}
}

// damageKinds are ways to damage the needle at off (which holds dataLen
// bytes of data). headerReadable says whether the needle's header still
// decodes afterwards, which format 1 needs to tell where the batch ends.
var damageKinds = []struct {
	name           string
	headerReadable bool
	apply          func(b []byte, off int64, dataLen int)
}{
	{"data", true, func(b []byte, off int64, _ int) { b[off+needle.HeaderSize+3] ^= 0x40 }},
	{"key", true, func(b []byte, off int64, _ int) { b[off+13] ^= 0x01 }},
	{"checksum", true, func(b []byte, off int64, n int) { b[off+needle.HeaderSize+int64(n)+6] ^= 0x80 }},
	{"footer magic", true, func(b []byte, off int64, n int) { b[off+needle.HeaderSize+int64(n)+1] ^= 0x02 }},
	{"header magic", false, func(b []byte, off int64, _ int) { b[off+1] ^= 0x20 }},
	{"batch flag", false, func(b []byte, off int64, _ int) { b[off+24] ^= needle.FlagBatchContinues }},
	{"zeroed", false, func(b []byte, off int64, n int) { clear(b[off : off+int64(needle.EncodedLen(n))]) }},
}

// expectKeptBytes checks that no byte of the .dat as it was before
// recovery (dat) is lost: the first size bytes are still in the .dat and
// the rest, if any, were moved aside whole into one torn-tail file.
func expectKeptBytes(t testing.TB, fs vfs.FS, vid uint32, dat []byte, size int64) {
	t.Helper()
	now := fileBytes(t, fs, DatPath(testDir, vid))
	if int64(len(now)) != size || !bytes.Equal(now, dat[:size]) {
		t.Fatalf("the .dat is %d bytes, status says %d, and it must be a prefix of the %d it was", len(now), size, len(dat))
	}
	names, err := fs.List(testDir)
	if err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Base(DatPath(testDir, vid)) + ".torn-"
	var torn []string
	for _, name := range names {
		if strings.HasPrefix(name, prefix) {
			torn = append(torn, name)
		}
	}
	if size == int64(len(dat)) {
		if len(torn) != 0 {
			t.Fatalf("nothing was cut, yet %v were written", torn)
		}
		return
	}
	if len(torn) != 1 || !strings.HasPrefix(torn[0], fmt.Sprintf("%s%d-", prefix, size)) {
		t.Fatalf("%d bytes cut off at %d, torn-tail files %v", int64(len(dat))-size, size, torn)
	}
	if got := fileBytes(t, fs, filepath.Join(testDir, torn[0])); !bytes.Equal(got, dat[size:]) {
		t.Fatalf("the torn-tail file holds %d bytes, not the %d cut off", len(got), int64(len(dat))-size)
	}
}

// TestDamageInEveryBatchPosition damages, in turn, every needle of a batch
// of one and of four needles, in several ways, with intact batches before
// it and, in turn, nothing, a tombstone, a single needle and a photo after
// it, and recovers the volume from the .dat alone and from an idx that
// covers the batches before the damage. Every intact batch must be kept
// (the tombstone deletes what it deletes), no needle of the damaged batch
// may appear in a format-2 volume, and no byte is lost: a torn tail is
// moved aside whole before it is cut off.
func TestDamageInEveryBatchPosition(t *testing.T) {
	afters := []struct {
		name    string
		batches func() []*testBatch
	}{
		{"last", func() []*testBatch { return nil }},
		{"then a delete", func() []*testBatch { return []*testBatch{tombstoneBatch(1, needle.SizeAll)} }},
		{"then a needle", func() []*testBatch { return []*testBatch{dataBatch(40, 1), dataBatch(41, 1)} }},
		{"then a photo", func() []*testBatch { return []*testBatch{dataBatch(50, 4), tombstoneBatch(2, needle.SizeOriginal)} }},
	}
	for _, version := range []uint32{needle.Version1, needle.Version2} {
		for _, size := range []int{1, 4} {
			for pos := 0; pos < size; pos++ {
				for _, kind := range damageKinds {
					if version == needle.Version1 && !kind.headerReadable {
						continue // see TestFormat1DamageKeepsNeighbours
					}
					for _, after := range afters {
						for _, withIdx := range []bool{false, true} {
							name := fmt.Sprintf("v%d/batch of %d/needle %d/%s/%s/idx %v", version, size, pos, kind.name, after.name, withIdx)
							t.Run(name, func(t *testing.T) {
								checkDamagedBatch(t, version, size, pos, kind.apply, after.batches(), withIdx, true)
							})
						}
					}
				}
			}
		}
	}
}

// TestFormat1DamageKeepsNeighbours: in format 1, damage that leaves no
// readable header cannot say where the damaged batch ends; the batches
// around it must still all be kept.
func TestFormat1DamageKeepsNeighbours(t *testing.T) {
	for _, size := range []int{1, 4} {
		for pos := 0; pos < size; pos++ {
			for _, kind := range damageKinds {
				if kind.headerReadable {
					continue
				}
				t.Run(fmt.Sprintf("batch of %d/needle %d/%s", size, pos, kind.name), func(t *testing.T) {
					after := []*testBatch{tombstoneBatch(1, needle.SizeAll), dataBatch(40, 1), dataBatch(50, 4)}
					checkDamagedBatch(t, needle.Version1, size, pos, kind.apply, after, false, false)
				})
			}
		}
	}
}

// checkDamagedBatch builds a volume of batches before, a batch of size
// needles whose needle pos is damaged, and after; reopens it; and checks
// it. dropDamaged says the damaged batch must be gone whole.
func checkDamagedBatch(t *testing.T, version uint32, size, pos int, damage func([]byte, int64, int), after []*testBatch, withIdx, dropDamaged bool) {
	t.Helper()
	const vid = 30
	before := []*testBatch{dataBatch(1, 4), dataBatch(2, 1), dataBatch(3, 4), dataBatch(4, 1)}
	damaged := dataBatch(20, size)
	all := append(append(append([]*testBatch{}, before...), damaged), after...)
	dat := buildDat(t, superblockOf(version, vid), all)
	damage(dat, damaged.offs[pos], len(damaged.needles[pos].Data))
	fs := memFS(t)
	writeFile(t, fs, DatPath(testDir, vid), dat)
	if withIdx {
		recs := encodeIdxHeader(vid, 0)
		for _, bt := range before {
			for i, n := range bt.needles {
				recs = appendIdxRecord(recs, idxEntry{key: n.Key, size: uint32(n.Size), off: uint32(bt.offs[i] / 8),
					length: uint32(needle.EncodedLen(len(n.Data)) / 8), tombstone: n.IsTombstone()})
			}
		}
		writeFile(t, fs, IdxPath(testDir, vid), recs)
	}
	v, err := Open(context.Background(), testDir, vid, Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.Check(); err != nil {
		t.Fatal(err)
	}
	// The model: every intact batch applied in order.
	type mk struct {
		key  uint64
		size needle.SizeCode
	}
	model := map[mk]*needle.Needle{}
	for _, bt := range all {
		if bt == damaged {
			continue
		}
		for _, n := range bt.needles {
			if n.IsTombstone() {
				for k := range model {
					if k.key == n.Key && (n.Size == needle.SizeAll || k.size == n.Size) {
						delete(model, k)
					}
				}
				continue
			}
			model[mk{n.Key, n.Size}] = n
		}
	}
	for _, bt := range all {
		for _, n := range bt.needles {
			if n.IsTombstone() || bt == damaged {
				continue
			}
			if want, ok := model[mk{n.Key, n.Size}]; ok {
				expectRead(t, v, want)
			} else {
				expectNotFound(t, v, n.Key, n.Cookie, n.Size)
			}
		}
	}
	if dropDamaged {
		for _, n := range damaged.needles {
			if v.Has(n.Key, n.Size) {
				t.Fatalf("needle %v of the damaged batch is indexed", n.Size)
			}
		}
		if got := v.Status().Images; got != len(model) {
			t.Fatalf("%d images, want %d", got, len(model))
		}
	}
	expectKeptBytes(t, fs, vid, dat, v.Status().Size)
	// The volume goes on: a new needle after the damage survives a
	// reopen from the .dat alone, and so does everything above.
	if version >= needle.Version2 {
		extra := dataBatch(99, 4).needles
		mustWrite(t, v, extra)
		v.Close()
		if err := fs.Remove(IdxPath(testDir, vid)); err != nil {
			t.Fatal(err)
		}
		v = reopen(t, fs, vid)
		for _, n := range extra {
			expectRead(t, v, n)
		}
		for _, want := range model {
			expectRead(t, v, want)
		}
	}
}

// TestNeedleShapedDataNotIndexed stores an image whose data holds encoded
// needles (a tombstone and a replacement for a victim photo, whose key and
// cookie are public, in format 1 and in format 2 under another secret),
// then damages the carrier's header so recovery must search for the next
// needle through its data. Nothing inside the data may be indexed.
func TestNeedleShapedDataNotIndexed(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 31, Options{})
	victim := photo(7, 77)
	mustWrite(t, v, victim)
	var payload []byte
	other, err := needle.NewFormat2([]byte{1, 1, 2, 3, 5, 8, 13, 21})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []needle.Format{needle.Format1(), other} {
		forged := []*needle.Needle{
			{Key: 7, Cookie: 77, Size: needle.SizeAll, Flags: needle.FlagTombstone, BatchStart: true},
			{Key: 7, Cookie: 77, Size: needle.SizeMedium, ContentType: needle.TypeJPEG, Data: []byte("forged"), BatchStart: true},
			{Key: 8, Cookie: 88, Size: needle.SizeThumb, ContentType: needle.TypeJPEG, Data: []byte("planted"), BatchStart: true},
		}
		for _, n := range forged {
			if payload, err = f.Append(payload, n); err != nil {
				t.Fatal(err)
			}
		}
	}
	carrier := &needle.Needle{Key: 9, Cookie: 99, Size: needle.SizeOriginal, ContentType: needle.TypeJPEG, Data: payload}
	w := mustWrite(t, v, []*needle.Needle{carrier})
	after := photo(10, 100)
	mustWrite(t, v, after)
	v.Close()
	dat := fileBytes(t, fs, DatPath(testDir, 31))
	dat[w[0].Offset+14] ^= 0xff // the carrier's key: its checksum fails
	writeFile(t, fs, DatPath(testDir, 31), dat)
	if err := fs.Remove(IdxPath(testDir, 31)); err != nil {
		t.Fatal(err)
	}
	v = reopen(t, fs, 31)
	defer v.Close()
	for _, n := range append(victim, after...) {
		expectRead(t, v, n)
	}
	expectNotFound(t, v, 8, 88, needle.SizeThumb)
	if got := v.Status().Images; got != 8 {
		t.Fatalf("%d images, want the 8 written: bytes inside data were indexed", got)
	}
}

// TestFormat1Fixture opens a small volume written by the format-1 encoder
// (testdata/format1, made before format 2 existed): it serves its needles,
// takes deletes, refuses images, survives a reopen and compacts in format 1
// with unchanged checksums.
func TestFormat1Fixture(t *testing.T) {
	fs := memFS(t)
	for _, name := range []string{"3.dat", "3.idx"} {
		b, err := os.ReadFile(filepath.Join("testdata", "format1", name))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, fs, filepath.Join(testDir, name), b)
	}
	v := reopen(t, fs, 3)
	if sb := v.Superblock(); sb.Version != needle.Version1 || sb.Secret != [SecretSize]byte{} {
		t.Fatalf("superblock %+v", sb)
	}
	if st, reason := v.State(); st != StateReadOnly || reason != formatReadOnlyReason {
		t.Fatalf("state %v %q, want read-only for format 1", st, reason)
	}
	sums := map[needle.SizeCode]uint64{}
	for i, size := range needle.PhotoSizes {
		n, _, err := v.Read(0x101, 0xc001, size, nil)
		if err != nil || !bytes.Equal(n.Data, bytes.Repeat([]byte{byte('a' + i)}, 20+i*7)) {
			t.Fatalf("size %v: %v", size, err)
		}
		sums[size] = n.Checksum
	}
	n, _, err := v.Read(0x102, 0xc002, needle.SizeOriginal, nil)
	if err != nil || string(n.Data) != "format one original" || n.ContentType != needle.TypePNG {
		t.Fatalf("key 0x102: %v", err)
	}
	expectNotFound(t, v, 0x103, 0xc003, needle.SizeSmall)
	if _, err := v.Write(context.Background(), photo(0x200, 1)); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("image written to a format-1 volume: %v", err)
	}
	if _, err := v.Delete(context.Background(), 0x102, 0xc002, needle.SizeAll); err != nil {
		t.Fatal(err)
	}
	v.Close()
	if err := fs.Remove(IdxPath(testDir, 3)); err != nil {
		t.Fatal(err)
	}
	v = reopen(t, fs, 3)
	defer v.Close()
	expectNotFound(t, v, 0x102, 0xc002, needle.SizeOriginal)
	res, err := v.Compact(context.Background(), CompactOptions{})
	if err != nil || res.Copied != 4 {
		t.Fatalf("compact: %+v %v", res, err)
	}
	if sb := v.Superblock(); sb.Version != needle.Version1 {
		t.Fatalf("compaction changed the format to %d", sb.Version)
	}
	for _, size := range needle.PhotoSizes {
		n, _, err := v.Read(0x101, 0xc001, size, nil)
		if err != nil || n.Checksum != sums[size] {
			t.Fatalf("after compaction, size %v: %v", size, err)
		}
	}
}

// TestSecretKeptByCreateAndCompaction: the secret given to Create is the
// one in the superblock, survives compaction and reopening, and frames the
// needles; a bad one is refused.
func TestSecretKeptByCreateAndCompaction(t *testing.T) {
	fs := memFS(t)
	secret := []byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4}
	v := create(t, fs, 32, Options{Secret: secret})
	if sb := v.Superblock(); sb.Version != FormatVersion || !bytes.Equal(sb.Secret[:], secret) {
		t.Fatalf("superblock %+v", sb)
	}
	ns := photo(1, 1)
	mustWrite(t, v, ns)
	if _, err := v.Delete(context.Background(), 1, 1, needle.SizeThumb); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Compact(context.Background(), CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	v.Close()
	dat := fileBytes(t, fs, DatPath(testDir, 32))
	sb, err := DecodeSuperblock(dat)
	if err != nil || !bytes.Equal(sb.Secret[:], secret) || sb.Generation != 1 {
		t.Fatalf("after compaction: %+v %v", sb, err)
	}
	f, _ := sb.Format()
	if n, err := f.Decode(dat[SuperblockSize:]); err != nil || !n.BatchStart || n.Size != needle.SizeSmall {
		t.Fatalf("first needle after compaction: %+v %v", n, err)
	}
	if err := fs.Remove(IdxPath(testDir, 32)); err != nil {
		t.Fatal(err)
	}
	v = reopen(t, fs, 32)
	for _, n := range ns[1:] {
		expectRead(t, v, n)
	}
	v.Close()
	for _, bad := range [][]byte{{1, 2, 3}, make([]byte, SecretSize)} {
		if _, err := Create(context.Background(), testDir, 33, Options{FS: fs, Secret: bad}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("secret %x: %v", bad, err)
		}
	}
	// Two volumes created without a secret get different ones.
	a, b := create(t, fs, 34, Options{}), create(t, fs, 35, Options{Now: func() time.Time { return time.Unix(1, 0) }})
	defer a.Close()
	defer b.Close()
	if a.Superblock().Secret == b.Superblock().Secret {
		t.Fatal("random secrets repeat")
	}
}
