package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/internal/vfs/errorfs"
	"github.com/haybale/haybale/needle"
)

const testDir = "/data"

func memFS(t testing.TB) *vfs.MemFS {
	t.Helper()
	fs := vfs.NewMem()
	if err := fs.MkdirAll(testDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := fs.SyncDir("/"); err != nil {
		t.Fatal(err)
	}
	return fs
}

func create(t testing.TB, fs vfs.FS, vid uint32, opts Options) *Volume {
	t.Helper()
	opts.FS = fs
	v, err := Create(context.Background(), testDir, vid, opts)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func reopen(t testing.TB, fs vfs.FS, vid uint32) *Volume {
	t.Helper()
	v, err := Open(context.Background(), testDir, vid, Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Check(); err != nil {
		t.Fatalf("check after open: %v", err)
	}
	return v
}

// photo returns the four needles of one photo with deterministic contents.
func photo(key, cookie uint64) []*needle.Needle {
	var ns []*needle.Needle
	for i, size := range needle.PhotoSizes {
		data := bytes.Repeat([]byte{byte(key), byte(size), byte(key >> 8)}, 40*(i+1)+int(key%7))
		ns = append(ns, &needle.Needle{Key: key, Cookie: cookie, Size: size, ContentType: needle.TypeJPEG, Data: data})
	}
	return ns
}

func mustWrite(t testing.TB, v *Volume, ns []*needle.Needle) []Written {
	t.Helper()
	w, err := v.Write(context.Background(), ns)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func expectRead(t testing.TB, v *Volume, want *needle.Needle) {
	t.Helper()
	n, _, err := v.Read(want.Key, want.Cookie, want.Size, nil)
	if err != nil {
		t.Fatalf("read key %x size %v: %v", want.Key, want.Size, err)
	}
	if !bytes.Equal(n.Data, want.Data) || n.ContentType != want.ContentType || (want.Checksum != 0 && n.Checksum != want.Checksum) {
		t.Fatalf("read key %x size %v: wrong needle", want.Key, want.Size)
	}
}

func expectNotFound(t testing.TB, v *Volume, key, cookie uint64, size needle.SizeCode) {
	t.Helper()
	if _, _, err := v.Read(key, cookie, size, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read key %x size %v: got %v, want ErrNotFound", key, size, err)
	}
}

func TestRoundTripEverySizeAndType(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 1, Options{})
	var all []*needle.Needle
	key := uint64(1)
	for size := needle.SizeThumb; size <= needle.SizeOriginal; size++ {
		for ct := needle.TypeUnknown; ct <= needle.TypeWebP; ct++ {
			n := &needle.Needle{Key: key, Cookie: key * 31, Size: size, ContentType: ct, Data: []byte(fmt.Sprint("image ", key, size, ct))}
			w := mustWrite(t, v, []*needle.Needle{n})
			if w[0].Offset%8 != 0 || w[0].Checksum != n.Checksum {
				t.Fatalf("bad Written %+v", w[0])
			}
			all = append(all, n)
			key++
		}
	}
	for _, n := range all {
		expectRead(t, v, n)
		expectNotFound(t, v, n.Key, n.Cookie+1, n.Size)     // wrong cookie
		expectNotFound(t, v, n.Key, n.Cookie, (n.Size+1)%5) // other size
		expectNotFound(t, v, n.Key+1000, n.Cookie, n.Size)  // unknown key
		if _, _, err := v.Read(n.Key, n.Cookie, n.Size, nil); err != nil {
			t.Fatal(err)
		}
	}
	if st := v.Status(); st.Images != len(all) || st.Deleted != 0 || st.State != StateWritable {
		t.Fatalf("status %+v", st)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v = reopen(t, fs, 1)
	for _, n := range all {
		expectRead(t, v, n)
	}
	if _, _, err := v.Read(1, 31, 0, nil); err != nil {
		t.Fatal(err)
	}
	v.Close()
	if _, _, err := v.Read(1, 31, 0, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if _, err := v.Write(context.Background(), photo(9, 9)); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

func TestWriteRejectsInvalid(t *testing.T) {
	v := create(t, memFS(t), 1, Options{})
	defer v.Close()
	for name, ns := range map[string][]*needle.Needle{
		"empty":     nil,
		"key 0":     {{Key: 0, Size: needle.SizeThumb}},
		"size code": {{Key: 1, Size: 12}},
		"size code between the original and the WebP variants": {{Key: 1, Size: 5}},
		"tombstone": {{Key: 1, Flags: needle.FlagTombstone}},
		"too large": {{Key: 1, Data: make([]byte, needle.MaxDataSize+1)}},
	} {
		if _, err := v.Write(context.Background(), ns); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v", name, err)
		}
	}
	if st := v.Status(); st.Size != SuperblockSize {
		t.Fatalf("invalid writes changed the volume: %+v", st)
	}
}

func TestTombstones(t *testing.T) {
	for _, dropIdx := range []bool{false, true} {
		t.Run(fmt.Sprint("dropIdx=", dropIdx), func(t *testing.T) {
			fs := memFS(t)
			v := create(t, fs, 3, Options{})
			a, b, c := photo(10, 100), photo(11, 111), photo(12, 122)
			mustWrite(t, v, a)
			mustWrite(t, v, b)
			mustWrite(t, v, c)
			if _, err := v.Delete(context.Background(), 10, 999, needle.SizeAll); !errors.Is(err, ErrNotFound) {
				t.Fatalf("delete with wrong cookie: %v", err)
			}
			freed, err := v.Delete(context.Background(), 10, 100, needle.SizeAll)
			if err != nil {
				t.Fatal(err)
			}
			var want int64
			for _, n := range a {
				want += int64(needle.EncodedLen(len(n.Data)))
			}
			if freed != want {
				t.Fatalf("freed %d, want %d", freed, want)
			}
			if _, err := v.Delete(context.Background(), 11, 111, needle.SizeMedium); err != nil {
				t.Fatal(err)
			}
			size := v.Status().Size
			if freed, err := v.Delete(context.Background(), 11, 111, needle.SizeMedium); err != nil || freed != 0 || v.Status().Size != size {
				t.Fatalf("second delete: freed %d, %v; volume grew from %d to %d bytes", freed, err, size, v.Status().Size)
			}
			check := func(v *Volume) {
				for _, n := range a {
					expectNotFound(t, v, n.Key, n.Cookie, n.Size)
				}
				for _, n := range b {
					if n.Size == needle.SizeMedium {
						expectNotFound(t, v, n.Key, n.Cookie, n.Size)
					} else {
						expectRead(t, v, n)
					}
				}
				for _, n := range c {
					expectRead(t, v, n)
				}
				if st := v.Status(); st.Images != 7 || st.Deleted <= want {
					t.Fatalf("status %+v", st)
				}
			}
			check(v)
			v.Close()
			if dropIdx {
				if err := fs.Remove(IdxPath(testDir, 3)); err != nil {
					t.Fatal(err)
				}
			}
			v = reopen(t, fs, 3)
			check(v)
			// Tombstones are permanent: a write of a deleted image is
			// refused, and it stays deleted.
			if _, err := v.Write(context.Background(), a[:1]); !errors.Is(err, ErrDeleted) {
				t.Fatalf("rewrite after a delete: %v, want ErrDeleted", err)
			}
			v.Close()
			v = reopen(t, fs, 3)
			expectNotFound(t, v, a[0].Key, a[0].Cookie, a[0].Size)
			v.Close()
		})
	}
}

// datBytes returns the durable bytes of a volume's .dat.
func fileBytes(t testing.TB, fs vfs.FS, path string) []byte {
	t.Helper()
	f, err := fs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, _ := f.Size()
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t testing.TB, fs vfs.FS, path string, b []byte) {
	t.Helper()
	f, err := fs.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// TestTornTail truncates the volume at every byte offset inside its last
// needle: each time the earlier needles read back, the torn one is gone, and
// its bytes are moved aside before they are cut off.
func TestTornTail(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 5, Options{})
	var earlier []*needle.Needle
	for k := uint64(1); k <= 5; k++ {
		ns := photo(k, k)
		mustWrite(t, v, ns)
		earlier = append(earlier, ns...)
	}
	last := &needle.Needle{Key: 99, Cookie: 9, Size: needle.SizeLarge, ContentType: needle.TypePNG, Data: bytes.Repeat([]byte("torn"), 30)}
	w := mustWrite(t, v, []*needle.Needle{last})
	v.Close()
	dat := fileBytes(t, fs, DatPath(testDir, 5))
	idx := fileBytes(t, fs, IdxPath(testDir, 5))
	for _, keepIdx := range []bool{true, false} {
		for cut := w[0].Offset; cut < w[0].Offset+int64(w[0].Length); cut++ {
			writeFile(t, fs, DatPath(testDir, 5), dat[:cut])
			if keepIdx {
				writeFile(t, fs, IdxPath(testDir, 5), idx)
			} else if err := fs.Remove(IdxPath(testDir, 5)); err != nil {
				t.Fatal(err)
			}
			v := reopen(t, fs, 5)
			for _, n := range earlier {
				expectRead(t, v, n)
			}
			expectNotFound(t, v, last.Key, last.Cookie, last.Size)
			// The torn bytes are moved aside, then cut off.
			if st := v.Status(); st.Size != w[0].Offset || st.CorruptBytes != cut-w[0].Offset {
				t.Fatalf("cut %d: size %d, %d corrupt bytes; want the torn needle cut off at %d", cut, st.Size, st.CorruptBytes, w[0].Offset)
			}
			expectKeptBytes(t, fs, 5, dat[:cut], w[0].Offset)
			// The volume takes writes again after the cut, and they
			// survive a reopen with or without the idx.
			mustWrite(t, v, []*needle.Needle{last})
			expectRead(t, v, last)
			v.Close()
			for _, dropIdx := range []bool{false, true} {
				if dropIdx {
					if err := fs.Remove(IdxPath(testDir, 5)); err != nil {
						t.Fatal(err)
					}
				}
				v = reopen(t, fs, 5)
				for _, n := range append(earlier, last) {
					expectRead(t, v, n)
				}
				v.Close()
			}
			removeTorn(t, fs)
		}
	}
}

// TestTornBatch cuts a four-needle batch inside its third needle: none of
// its needles may appear, even the two that are intact, and its bytes are
// moved aside before they are cut off.
func TestTornBatch(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 6, Options{})
	first := photo(1, 1)
	mustWrite(t, v, first)
	second := photo(2, 2)
	w := mustWrite(t, v, second)
	v.Close()
	dat := fileBytes(t, fs, DatPath(testDir, 6))
	writeFile(t, fs, DatPath(testDir, 6), dat[:w[2].Offset+10])
	if err := fs.Remove(IdxPath(testDir, 6)); err != nil {
		t.Fatal(err)
	}
	v = reopen(t, fs, 6)
	defer v.Close()
	for _, n := range first {
		expectRead(t, v, n)
	}
	for _, n := range second {
		expectNotFound(t, v, n.Key, n.Cookie, n.Size)
	}
	// The torn batch is moved aside before it is cut off: its intact
	// needles may have been acknowledged before a bit flip.
	if st := v.Status(); st.Size != w[0].Offset {
		t.Fatalf("size %d, want %d", st.Size, w[0].Offset)
	}
	expectKeptBytes(t, fs, 6, dat[:w[2].Offset+10], w[0].Offset)
}

// removeTorn removes the torn-tail files recovery moved aside in testDir.
func removeTorn(t testing.TB, fs vfs.FS) {
	t.Helper()
	names, err := fs.List(testDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if strings.Contains(name, ".torn-") {
			if err := fs.Remove(filepath.Join(testDir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestBitFlipsDetected flips bits in the header, data and footer of a
// stored needle: every read reports corruption and returns no bytes.
func TestBitFlipsDetected(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 7, Options{})
	n := &needle.Needle{Key: 5, Cookie: 55, Size: needle.SizeSmall, ContentType: needle.TypeJPEG, Data: bytes.Repeat([]byte("data"), 64)}
	w := mustWrite(t, v, []*needle.Needle{n})
	v.Close()
	dat := fileBytes(t, fs, DatPath(testDir, 7))
	body := needle.HeaderSize + len(n.Data) + needle.FooterSize
	for _, rel := range []int{0, 4, 12, 20, 24, 25, 28, 36, needle.HeaderSize, needle.HeaderSize + 100, body - 12, body - 8, body - 1} {
		bad := bytes.Clone(dat)
		bad[w[0].Offset+int64(rel)] ^= 0x10
		writeFile(t, fs, DatPath(testDir, 7), bad)
		v, err := Open(context.Background(), testDir, 7, Options{FS: fs})
		if err != nil {
			t.Fatal(err)
		}
		got, buf, err := v.Read(n.Key, n.Cookie, n.Size, nil)
		if !IsCorruption(err) {
			t.Fatalf("flip at +%d: got %v, want corruption", rel, err)
		}
		if got.Data != nil {
			t.Fatalf("flip at +%d: bytes returned with the error", rel)
		}
		_ = buf
		if v.Check() == nil {
			t.Fatalf("flip at +%d: Check found nothing", rel)
		}
		v.Close()
	}
}

// TestMidFileDamageKeepsLaterNeedles damages a needle in the unindexed tail
// that is followed by valid needles: recovery drops the batch around the
// damage (a batch lands whole or not at all) but must not cut the batches
// after it.
func TestMidFileDamageKeepsLaterNeedles(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 8, Options{})
	var ws [][]Written
	var ps [][]*needle.Needle
	for k := uint64(1); k <= 4; k++ {
		ps = append(ps, photo(k, k))
		ws = append(ws, mustWrite(t, v, ps[k-1]))
	}
	v.Close()
	dat := fileBytes(t, fs, DatPath(testDir, 8))
	dat[ws[1][1].Offset+needle.HeaderSize+3] ^= 0xff // photo 2, size s
	writeFile(t, fs, DatPath(testDir, 8), dat)
	if err := fs.Remove(IdxPath(testDir, 8)); err != nil {
		t.Fatal(err)
	}
	v = reopen(t, fs, 8)
	defer v.Close()
	for i, p := range ps {
		for _, n := range p {
			if i == 1 {
				expectNotFound(t, v, n.Key, n.Cookie, n.Size)
				continue
			}
			expectRead(t, v, n)
		}
	}
	if st := v.Status(); st.Size != int64(len(dat)) {
		t.Fatalf("size %d, want %d: valid data was cut", st.Size, len(dat))
	}
}

func TestOnePreadPerRead(t *testing.T) {
	counter := &errorfs.Counter{}
	fs := errorfs.Wrap(memFS(t), counter)
	v := create(t, fs, 9, Options{})
	defer v.Close()
	var all []*needle.Needle
	for k := uint64(1); k <= 20; k++ {
		ns := photo(k, k)
		mustWrite(t, v, ns)
		all = append(all, ns...)
	}
	before := counter.Count(errorfs.OpRead)
	for _, n := range all {
		expectRead(t, v, n)
	}
	if got := counter.Count(errorfs.OpRead) - before; got != int64(len(all)) {
		t.Fatalf("%d reads took %d preads, want exactly one each", len(all), got)
	}
	before = counter.Count(errorfs.OpRead)
	expectNotFound(t, v, 12345, 1, needle.SizeThumb)
	if got := counter.Count(errorfs.OpRead) - before; got != 0 {
		t.Fatalf("a miss cost %d preads, want 0", got)
	}
}

func TestVolumeFull(t *testing.T) {
	fs := memFS(t)
	limit := int64(SuperblockSize + 3*needle.EncodedLen(1000))
	v := create(t, fs, 10, Options{SizeLimit: limit})
	data := make([]byte, 1000)
	for k := uint64(1); k <= 2; k++ {
		mustWrite(t, v, []*needle.Needle{{Key: k, Cookie: k, Size: 0, Data: data}})
	}
	// Two needles do not fit in the room for one.
	_, err := v.Write(context.Background(), []*needle.Needle{{Key: 3, Size: 0, Data: data}, {Key: 3, Size: 1, Data: data}})
	if !errors.Is(err, ErrFull) || !errors.Is(err, ErrReadOnly) {
		t.Fatalf("got %v, want ErrFull", err)
	}
	if st, reason := v.State(); st != StateReadOnly || reason != "full" {
		t.Fatalf("state %v %q", st, reason)
	}
	if _, err := v.Write(context.Background(), []*needle.Needle{{Key: 4, Size: 0, Data: []byte{1}}}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to full volume: %v", err)
	}
	// Deletes still work on a read-only volume.
	if _, err := v.Delete(context.Background(), 1, 1, needle.SizeAll); err != nil {
		t.Fatal(err)
	}
	v.Close()
	v = reopen(t, fs, 10)
	defer v.Close()
	expectNotFound(t, v, 1, 1, 0)
	if _, _, err := v.Read(2, 2, 0, nil); err != nil {
		t.Fatal(err)
	}
}

func TestMarkReadOnlySurvivesRestart(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 11, Options{})
	mustWrite(t, v, photo(1, 1))
	if err := v.MarkReadOnly(context.Background(), "disk retiring"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Write(context.Background(), photo(2, 2)); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("got %v", err)
	}
	v.Close()
	v = reopen(t, fs, 11)
	defer v.Close()
	if st, reason := v.State(); st != StateReadOnly || reason != "disk retiring" {
		t.Fatalf("after restart: %v %q", st, reason)
	}
}

// TestMarkReadOnlyConcurrent: marks made at the same time (a heartbeat's
// and an operator's) all succeed; they share the marker's temporary file.
func TestMarkReadOnlyConcurrent(t *testing.T) {
	v, err := Create(context.Background(), t.TempDir(), 12, Options{FS: vfs.Default})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			if err := v.MarkReadOnly(context.Background(), fmt.Sprintf("mark %d", i)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st, _ := v.State(); st != StateReadOnly {
		t.Fatalf("state %v", st)
	}
}

func TestOpenRejectsForeignFiles(t *testing.T) {
	fs := memFS(t)
	writeFile(t, fs, DatPath(testDir, 12), []byte("definitely not a volume superblock, and long enough to be read fully....."))
	if _, err := Open(context.Background(), testDir, 12, Options{FS: fs}); !errors.Is(err, ErrNotVolume) {
		t.Fatalf("got %v", err)
	}
	v := create(t, fs, 13, Options{})
	v.Close()
	// A volume file renamed to another vid is refused.
	if err := fs.Rename(DatPath(testDir, 13), DatPath(testDir, 14)); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), testDir, 14, Options{FS: fs}); !errors.Is(err, ErrNotVolume) {
		t.Fatalf("got %v", err)
	}
	if _, err := Open(context.Background(), testDir, 99, Options{FS: fs}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("open of a missing volume: %v", err)
	}
	if _, err := fs.Stat(DatPath(testDir, 99)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("opening a missing volume created its file")
	}
	if _, err := Create(context.Background(), testDir, 14, Options{FS: fs}); !errors.Is(err, ErrExists) {
		t.Fatalf("create over existing: %v", err)
	}
}

// TestIdxDamage damages the idx hint in several ways; the volume must come
// back complete each time.
func TestIdxDamage(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 15, Options{})
	var all []*needle.Needle
	for k := uint64(1); k <= 10; k++ {
		ns := photo(k, k)
		mustWrite(t, v, ns)
		all = append(all, ns...)
	}
	v.Close()
	idx := fileBytes(t, fs, IdxPath(testDir, 15))
	damage := map[string][]byte{
		"torn record":  idx[:len(idx)-5],
		"zeroed block": append(append(bytes.Clone(idx[:24*5]), make([]byte, 24*3)...), idx[24*8:]...),
		"flipped bit":  func() []byte { b := bytes.Clone(idx); b[24*20+9] ^= 1; return b }(),
		"bad header":   func() []byte { b := bytes.Clone(idx); b[0] = 'X'; return b }(),
		"empty":        nil,
	}
	for name, b := range damage {
		writeFile(t, fs, IdxPath(testDir, 15), b)
		v := reopen(t, fs, 15)
		for _, n := range all {
			expectRead(t, v, n)
		}
		v.Close()
		// The repaired idx is complete: open again, with the scan having
		// nothing left to do, and every needle is still there.
		v = reopen(t, fs, 15)
		if got := v.Status().Images; got != len(all) {
			t.Fatalf("%s: %d images after repair, want %d", name, got, len(all))
		}
		v.Close()
	}
}

func TestFaultInjection(t *testing.T) {
	cases := []struct {
		name       string
		kind       errorfs.OpKind
		err        error
		wantFailed bool
	}{
		{"ENOSPC on write", errorfs.OpWrite, syscall.ENOSPC, false},
		{"EIO on write", errorfs.OpWrite, syscall.EIO, false},
		{"short write", errorfs.OpWrite, nil, false},
		{"EIO on fsync", errorfs.OpSync, syscall.EIO, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mem := memFS(t)
			var inj errorfs.Injector
			if c.err == nil {
				inj = errorfs.OnPath(".dat", errorfs.ShortWrite(10))
			} else {
				inj = errorfs.OnPath(".dat", errorfs.OnKind(c.kind, c.err))
			}
			toggle := errorfs.NewToggle(inj)
			fs := errorfs.Wrap(mem, toggle)
			v := create(t, fs, 16, Options{})
			before := photo(1, 1)
			mustWrite(t, v, before)
			toggle.Enable()
			if _, err := v.Write(context.Background(), photo(2, 2)); err == nil {
				t.Fatal("failed write was acknowledged")
			}
			toggle.Disable()
			for _, n := range before {
				expectRead(t, v, n)
			}
			for _, n := range photo(2, 2) {
				expectNotFound(t, v, n.Key, n.Cookie, n.Size)
			}
			state, _ := v.State()
			if c.wantFailed {
				if state != StateFailed {
					t.Fatalf("state %v after failed fsync, want failed", state)
				}
				if _, err := v.Write(context.Background(), photo(3, 3)); !errors.Is(err, ErrReadOnly) {
					t.Fatalf("write to failed volume: %v", err)
				}
			} else {
				if state != StateWritable {
					t.Fatalf("state %v after a failed write, want writable", state)
				}
				mustWrite(t, v, photo(3, 3))
				expectRead(t, v, photo(3, 3)[2])
			}
			if err := v.Check(); err != nil {
				t.Fatal(err)
			}
			v.Close()
			// After a power cut, every acknowledged needle is there. The
			// failed batch was never acknowledged: with torn writes its
			// pages may all have reached the disk anyway, so it is either
			// whole or absent, never in part.
			seed := rand.Uint64()
			t.Logf("torn-write seed %d", seed)
			v = reopen(t, mem.CrashCloneTorn(seed), 16)
			defer v.Close()
			for _, n := range before {
				expectRead(t, v, n)
			}
			failed := photo(2, 2)
			if v.Has(failed[0].Key, failed[0].Size) {
				for _, n := range failed {
					expectRead(t, v, n)
				}
			} else {
				for _, n := range failed {
					expectNotFound(t, v, n.Key, n.Cookie, n.Size)
				}
			}
		})
	}
}

// TestGroupCommit checks that concurrent writers share fdatasyncs and that
// every acknowledged write survives a power cut.
func TestGroupCommit(t *testing.T) {
	counter := &errorfs.Counter{}
	mem := memFS(t)
	const writers, perWriter = 16, 25
	// The first round's fdatasync waits, when that round holds a single
	// batch, until two more batches are written or queued: while a round
	// syncs, the committer writes the batches that arrive into the next
	// round, or they wait in the queue to be taken together, so some round
	// shares its sync however the goroutines are scheduled. A round holds
	// more than one batch when its pwrite is longer than the largest batch.
	largest := 0
	for _, n := range photo(6, 6) { // key%7 == 6: the longest data
		largest += needle.EncodedLen(len(n.Data))
	}
	var vp atomic.Pointer[Volume]
	var gated atomic.Bool
	var firstRound atomic.Int64   // the first round's pwrite length
	var laterBatches atomic.Int64 // batches written after it: two for a pwrite longer than one
	gate := errorfs.InjectorFunc(func(op errorfs.Op) error {
		v := vp.Load()
		if v == nil || !strings.HasSuffix(op.Path, ".dat") {
			return nil
		}
		if op.Kind == errorfs.OpWrite {
			if !firstRound.CompareAndSwap(0, int64(op.Len)) {
				laterBatches.Add(1)
				if op.Len > largest {
					laterBatches.Add(1)
				}
			}
			return nil
		}
		if op.Kind != errorfs.OpSync || !gated.CompareAndSwap(false, true) || firstRound.Load() > int64(largest) {
			return nil
		}
		for {
			v.commit.mu.Lock()
			queued := len(v.commit.queue)
			v.commit.mu.Unlock()
			if int64(queued)+laterBatches.Load() >= 2 {
				return nil
			}
			time.Sleep(time.Millisecond)
		}
	})
	fs := errorfs.Wrap(mem, errorfs.Chain(counter, gate))
	v := create(t, fs, 17, Options{})
	vp.Store(v)
	syncsBefore := counter.Count(errorfs.OpSync)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				key := uint64(w*perWriter + i + 1)
				if _, err := v.Write(context.Background(), photo(key, key)); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	syncs := counter.Count(errorfs.OpSync) - syncsBefore
	t.Logf("%d writes, %d fdatasyncs", writers*perWriter, syncs)
	if syncs >= writers*perWriter {
		t.Fatalf("%d writes took %d syncs: no group commit", writers*perWriter, syncs)
	}
	seed := rand.Uint64()
	t.Logf("torn-write seed %d", seed)
	crashed := mem.CrashCloneTorn(seed)
	v.Close()
	v = reopen(t, crashed, 17)
	defer v.Close()
	for key := uint64(1); key <= writers*perWriter; key++ {
		for _, n := range photo(key, key) {
			expectRead(t, v, n)
		}
	}
}

// TestRandomOperations runs seeded random sequences of writes, rewrites,
// deletes, reads, power cuts (with torn writes) and reopenings against a map
// model.
func TestRandomOperations(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	mem := memFS(t)
	v := create(t, mem, 20, Options{})
	type mkey struct {
		key  uint64
		size needle.SizeCode
	}
	model := map[mkey]*needle.Needle{}
	dead := map[mkey]bool{} // deleted (key, size): never written again
	cookies := map[uint64]uint64{}
	nextKey := uint64(1)
	for step := 0; step < 3000; step++ {
		switch op := r.IntN(100); {
		case op < 40: // new photo
			key := nextKey
			if r.IntN(10) == 0 && key > 20 {
				key = key - uint64(r.IntN(20)) // out of order, maybe existing
			} else {
				nextKey++
			}
			cookie, ok := cookies[key]
			if !ok {
				cookie = r.Uint64()
				cookies[key] = cookie
			}
			ns := photo(key, cookie)
			wantDeleted := false
			for _, n := range ns {
				wantDeleted = wantDeleted || dead[mkey{key, n.Size}]
			}
			if _, err := v.Write(context.Background(), ns); wantDeleted != errors.Is(err, ErrDeleted) || (!wantDeleted && err != nil) {
				t.Fatalf("step %d: write of key %d: %v (deleted: %v)", step, key, err, wantDeleted)
			}
			for _, n := range ns {
				if !wantDeleted {
					model[mkey{key, n.Size}] = n
				}
			}
		case op < 50 && nextKey > 1: // rewrite one size
			key := 1 + uint64(r.IntN(int(nextKey-1)))
			cookie, ok := cookies[key]
			if !ok {
				continue
			}
			size := needle.SizeCode(r.IntN(5))
			n := &needle.Needle{Key: key, Cookie: cookie, Size: size, ContentType: needle.TypeWebP, Data: []byte(fmt.Sprint("rewrite ", step))}
			_, err := v.Write(context.Background(), []*needle.Needle{n})
			if dead[mkey{key, size}] {
				if !errors.Is(err, ErrDeleted) {
					t.Fatalf("step %d: rewrite of deleted key %d size %v: %v", step, key, size, err)
				}
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			model[mkey{key, size}] = n
		case op < 60 && nextKey > 1: // delete
			key := 1 + uint64(r.IntN(int(nextKey-1)))
			size := needle.SizeCode(r.IntN(5))
			if r.IntN(2) == 0 {
				size = needle.SizeAll
			}
			var freed int64
			for s := needle.SizeCode(0); s <= needle.SizeOriginal; s++ {
				if size == needle.SizeAll || s == size {
					if n, ok := model[mkey{key, s}]; ok {
						freed += int64(needle.EncodedLen(len(n.Data)))
						delete(model, mkey{key, s})
					}
					// Tombstones are permanent, even for what is not
					// there yet.
					dead[mkey{key, s}] = true
				}
			}
			got, err := v.Delete(context.Background(), key, cookies[key], size)
			if err != nil || got != freed {
				t.Fatalf("step %d: delete key %d size %v: freed %d, %v; model freed %d", step, key, size, got, err, freed)
			}
		case op < 62: // power cut
			crashed := mem.CrashCloneTorn(r.Uint64())
			v.Close()
			mem = crashed
			v = reopen(t, mem, 20)
		case op < 64: // clean restart
			v.Close()
			v = reopen(t, mem, 20)
		default: // read
			if nextKey == 1 {
				continue
			}
			key := 1 + uint64(r.IntN(int(nextKey-1)))
			size := needle.SizeCode(r.IntN(5))
			want, ok := model[mkey{key, size}]
			if ok {
				expectRead(t, v, want)
			} else {
				expectNotFound(t, v, key, cookies[key], size)
			}
		}
	}
	if st := v.Status(); st.Images != len(model) {
		t.Fatalf("%d images, model has %d", st.Images, len(model))
	}
	for _, n := range model {
		expectRead(t, v, n)
	}
	if err := v.Check(); err != nil {
		t.Fatal(err)
	}
	v.Close()
}

func TestOSFilesystem(t *testing.T) {
	dir := t.TempDir()
	v, err := Create(context.Background(), dir, 21, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns := photo(1, 1)
	mustWrite(t, v, ns)
	v.Close()
	v, err = Open(context.Background(), dir, 21, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for _, n := range ns {
		expectRead(t, v, n)
	}
	if _, err := vfs.Default.Stat(filepath.Join(dir, "21.idx")); err != nil {
		t.Fatal(err)
	}
}

// TestPartiallyPersistedRound models a power cut during a round whose
// pages reached the disk out of order: a page in the middle of a
// multi-needle batch is zeros, the rest of the batch is intact. None of
// the batch may appear, and the batches around it must.
func TestPartiallyPersistedRound(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 9, Options{})
	first := photo(1, 1)
	mustWrite(t, v, first)
	big := photo(2, 2)
	for _, n := range big {
		n.Data = bytes.Repeat([]byte{byte(n.Size) + 1}, 6000)
	}
	w := mustWrite(t, v, big)
	last := photo(3, 3)
	mustWrite(t, v, last)
	v.Close()
	dat := fileBytes(t, fs, DatPath(testDir, 9))
	// Zero a 4 KiB page inside the second needle (size s) of photo 2.
	page := (w[1].Offset + 4096) &^ 4095
	clear(dat[page : page+4096])
	writeFile(t, fs, DatPath(testDir, 9), dat)
	if err := fs.Remove(IdxPath(testDir, 9)); err != nil {
		t.Fatal(err)
	}
	v = reopen(t, fs, 9)
	defer v.Close()
	for _, n := range big {
		expectNotFound(t, v, n.Key, n.Cookie, n.Size)
	}
	for _, n := range append(first, last...) {
		expectRead(t, v, n)
	}
}

// TestWebPVariantsPacked writes photos of eight needles (four sizes and
// their WebP variants) in one batch each and checks that every needle reads
// back, before and after a reopen from the idx file, and that the index
// keeps them all in packed records, none in the exception tree.
func TestWebPVariantsPacked(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 1, Options{})
	var all []*needle.Needle
	for key := uint64(1); key <= 50; key++ {
		ns := photo(key, key*31)
		for i, size := range needle.WebPSizes {
			data := bytes.Repeat([]byte{'W', byte(key), byte(size)}, 20*(i+1)+int(key%5))
			ns = append(ns, &needle.Needle{Key: key, Cookie: key * 31, Size: size, ContentType: needle.TypeWebP, Data: data})
		}
		mustWrite(t, v, ns)
		all = append(all, ns...)
	}
	check := func(v *Volume, when string) {
		t.Helper()
		for _, n := range all {
			expectRead(t, v, n)
		}
		v.mu.RLock()
		exc, recs, images := v.mu.index.exc.Len(), v.mu.index.records(), v.mu.index.len()
		v.mu.RUnlock()
		if exc != 0 || recs != 100 || images != len(all) {
			t.Fatalf("%s: %d exceptions, %d packed records, %d images; want 0, 100, %d", when, exc, recs, images, len(all))
		}
	}
	check(v, "after writes")
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v = reopen(t, fs, 1)
	defer v.Close()
	check(v, "after reopen")
	// Deleting the photo removes its WebP variants too.
	if _, err := v.DeleteAt(context.Background(), 7, 7*31, needle.SizeAll, 1); err != nil {
		t.Fatal(err)
	}
	for _, size := range needle.WebPSizes {
		if _, _, err := v.Read(7, 7*31, size, nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("read of deleted %v: %v", size, err)
		}
	}
}
