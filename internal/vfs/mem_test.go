package vfs_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/vfs"
)

var _ vfs.FS = (*vfs.MemFS)(nil)

var seedFlag = flag.Uint64("seed", 0, "seed for randomized tests (0: from the clock)")

// mustCreate creates name in fs and writes data to it.
func mustCreate(t *testing.T, fs vfs.FS, name string, data []byte) vfs.File {
	t.Helper()
	f, err := fs.Create(name)
	if err != nil {
		t.Fatalf("Create(%q): %v", name, err)
	}
	if len(data) > 0 {
		if n, err := f.WriteAt(data, 0); n != len(data) || err != nil {
			t.Fatalf("WriteAt(%q) = %d, %v", name, n, err)
		}
	}
	return f
}

// contents returns the whole of name in fs, or nil and the error.
func contents(fs vfs.FS, name string) ([]byte, error) {
	f, err := fs.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, size)
	if n, err := f.ReadAt(buf, 0); n != len(buf) || (err != nil && err != io.EOF) {
		return nil, fmt.Errorf("ReadAt = %d, %v", n, err)
	}
	return buf, nil
}

func wantContents(t *testing.T, fs vfs.FS, name string, want []byte) {
	t.Helper()
	got, err := contents(fs, name)
	if err != nil {
		t.Fatalf("reading %q: %v", name, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%q holds %q, want %q", name, got, want)
	}
}

func wantNotExist(t *testing.T, fs vfs.FS, name string) {
	t.Helper()
	_, err := fs.Stat(name)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Stat(%q) = %v, want os.ErrNotExist", name, err)
	}
}

func wantPathErr(t *testing.T, err error, target error) {
	t.Helper()
	var pe *os.PathError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T) is not an *os.PathError", err, err)
	}
	if !errors.Is(err, target) {
		t.Fatalf("error %v does not wrap %v", err, target)
	}
}

func TestMemReadWrite(t *testing.T) {
	fs := vfs.NewMem()
	f := mustCreate(t, fs, "f", []byte("hello"))
	defer f.Close()

	// Writing past the end extends with zeros.
	if n, err := f.WriteAt([]byte("xy"), 10); n != 2 || err != nil {
		t.Fatalf("WriteAt past end = %d, %v", n, err)
	}
	if size, err := f.Size(); size != 12 || err != nil {
		t.Fatalf("Size = %d, %v; want 12", size, err)
	}
	wantContents(t, fs, "f", []byte("hello\x00\x00\x00\x00\x00xy"))

	// Overwrite in the middle.
	if _, err := f.WriteAt([]byte("LL"), 2); err != nil {
		t.Fatal(err)
	}
	wantContents(t, fs, "f", []byte("heLLo\x00\x00\x00\x00\x00xy"))

	// io.ReaderAt: a short read returns io.EOF.
	buf := make([]byte, 5)
	if n, err := f.ReadAt(buf, 10); n != 2 || err != io.EOF || string(buf[:n]) != "xy" {
		t.Fatalf("ReadAt(10) = %d, %v, %q; want 2, EOF, xy", n, err, buf[:n])
	}
	if n, err := f.ReadAt(buf, 12); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt(at end) = %d, %v; want 0, EOF", n, err)
	}
	if n, err := f.ReadAt(buf, 100); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt(past end) = %d, %v; want 0, EOF", n, err)
	}
	if n, err := f.ReadAt(buf, 0); n != 5 || err != nil || string(buf) != "heLLo" {
		t.Fatalf("ReadAt(0) = %d, %v, %q", n, err, buf)
	}
	if _, err := f.ReadAt(buf, -1); err == nil {
		t.Fatal("ReadAt(-1) succeeded")
	}
	if _, err := f.WriteAt(buf, -1); err == nil {
		t.Fatal("WriteAt(-1) succeeded")
	}
	// The caller's buffer is not retained.
	p := []byte("abc")
	if _, err := f.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	p[0] = 'Z'
	if _, err := f.ReadAt(buf[:3], 0); err != nil || string(buf[:3]) != "abc" {
		t.Fatalf("after changing the written buffer, file holds %q", buf[:3])
	}
}

func TestMemTruncate(t *testing.T) {
	fs := vfs.NewMem()
	f := mustCreate(t, fs, "f", []byte("0123456789"))
	defer f.Close()
	if err := f.Truncate(4); err != nil {
		t.Fatal(err)
	}
	wantContents(t, fs, "f", []byte("0123"))
	// Growing exposes zeros, never the bytes cut off before.
	if err := f.Truncate(8); err != nil {
		t.Fatal(err)
	}
	wantContents(t, fs, "f", []byte("0123\x00\x00\x00\x00"))
	if err := f.Truncate(2); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("z"), 6); err != nil {
		t.Fatal(err)
	}
	wantContents(t, fs, "f", []byte("01\x00\x00\x00\x00z"))
	wantPathErr(t, f.Truncate(-1), syscall.EINVAL)
	if fi, err := fs.Stat("f"); err != nil || fi.Size() != 7 {
		t.Fatalf("Stat = %v, %v; want size 7", fi, err)
	}
}

func TestMemOpenModes(t *testing.T) {
	fs := vfs.NewMem()
	_, err := fs.Open("missing")
	wantPathErr(t, err, os.ErrNotExist)

	mustCreate(t, fs, "f", []byte("abc")).Close()

	r, err := fs.Open("f")
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.WriteAt([]byte("x"), 0)
	wantPathErr(t, err, syscall.EBADF)
	wantPathErr(t, r.Truncate(0), syscall.EINVAL)
	buf := make([]byte, 3)
	if n, err := r.ReadAt(buf, 0); n != 3 || err != nil || string(buf) != "abc" {
		t.Fatalf("read-only ReadAt = %d, %v, %q", n, err, buf)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	wantContents(t, fs, "f", []byte("abc"))

	// OpenReadWrite keeps the contents of an existing file...
	rw, err := fs.OpenReadWrite("f")
	if err != nil {
		t.Fatal(err)
	}
	if size, _ := rw.Size(); size != 3 {
		t.Fatalf("OpenReadWrite of existing file: size %d, want 3", size)
	}
	rw.Close()
	// ...and creates a missing one.
	rw, err = fs.OpenReadWrite("g")
	if err != nil {
		t.Fatal(err)
	}
	rw.Close()
	wantContents(t, fs, "g", []byte{})

	// Create truncates.
	mustCreate(t, fs, "f", nil).Close()
	wantContents(t, fs, "f", []byte{})

	// Files cannot be opened as directories, nor directories as files.
	if err := fs.MkdirAll("d", 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = fs.Create("d")
	wantPathErr(t, err, syscall.EISDIR)
	_, err = fs.Open("d")
	wantPathErr(t, err, syscall.EISDIR)
}

func TestMemParentsMustExist(t *testing.T) {
	fs := vfs.NewMem()
	_, err := fs.Create("nodir/f")
	wantPathErr(t, err, os.ErrNotExist)
	_, err = fs.OpenReadWrite("nodir/f")
	wantPathErr(t, err, os.ErrNotExist)

	mustCreate(t, fs, "file", nil).Close()
	_, err = fs.Create("file/f")
	wantPathErr(t, err, syscall.ENOTDIR)
	wantPathErr(t, fs.MkdirAll("file/sub", 0o755), syscall.ENOTDIR)
	_, err = fs.Stat("file/sub")
	wantPathErr(t, err, syscall.ENOTDIR)

	if err := fs.MkdirAll("a/b/c", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := fs.MkdirAll("a/b/c", 0o755); err != nil {
		t.Fatalf("MkdirAll of an existing directory: %v", err)
	}
	mustCreate(t, fs, "a/b/c/f", []byte("x")).Close()
	// Path spellings are cleaned to the same file.
	for _, name := range []string{"/a/b/c/f", "a/./b/c/f", "a//b/c/f", "a/b/../b/c/f", "../a/b/c/f"} {
		wantContents(t, fs, name, []byte("x"))
	}
	_, err = fs.Stat("")
	wantPathErr(t, err, os.ErrNotExist)
}

func TestMemClosedFile(t *testing.T) {
	fs := vfs.NewMem()
	f := mustCreate(t, fs, "f", []byte("abc"))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := f.ReadAt(make([]byte, 1), 0)
	wantPathErr(t, err, os.ErrClosed)
	_, err = f.WriteAt([]byte("x"), 0)
	wantPathErr(t, err, os.ErrClosed)
	wantPathErr(t, f.Sync(), os.ErrClosed)
	wantPathErr(t, f.Truncate(0), os.ErrClosed)
	_, err = f.Size()
	wantPathErr(t, err, os.ErrClosed)
	wantPathErr(t, f.Close(), os.ErrClosed)
	wantContents(t, fs, "f", []byte("abc"))
}

func TestMemRename(t *testing.T) {
	fs := vfs.NewMem()
	f := mustCreate(t, fs, "a", []byte("A"))
	mustCreate(t, fs, "b", []byte("B")).Close()

	if err := fs.Rename("a", "b"); err != nil {
		t.Fatal(err)
	}
	wantNotExist(t, fs, "a")
	wantContents(t, fs, "b", []byte("A"))
	// An open file follows its node, not its name.
	if _, err := f.WriteAt([]byte("2"), 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	wantContents(t, fs, "b", []byte("A2"))

	if err := fs.Rename("b", "b"); err != nil {
		t.Fatalf("Rename onto itself: %v", err)
	}
	wantContents(t, fs, "b", []byte("A2"))

	err := fs.Rename("missing", "c")
	var le *os.LinkError
	if !errors.As(err, &le) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Rename(missing) = %v, want *os.LinkError wrapping ErrNotExist", err)
	}
	if err := fs.Rename("b", "nodir/b"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Rename into a missing directory = %v", err)
	}

	// Directories move with their contents.
	if err := fs.MkdirAll("d/sub", 0o755); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, fs, "d/sub/f", []byte("F")).Close()
	if err := fs.Rename("d", "e"); err != nil {
		t.Fatal(err)
	}
	wantContents(t, fs, "e/sub/f", []byte("F"))
	wantNotExist(t, fs, "d")
	if err := fs.Rename("e", "e/sub/x"); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Rename into own subtree = %v, want EINVAL", err)
	}
	if err := fs.Rename("b", "e"); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Rename onto a directory = %v, want ErrExist", err)
	}
	wantContents(t, fs, "b", []byte("A2"))
}

func TestMemRemove(t *testing.T) {
	fs := vfs.NewMem()
	f := mustCreate(t, fs, "f", []byte("abc"))
	if err := fs.Remove("f"); err != nil {
		t.Fatal(err)
	}
	wantNotExist(t, fs, "f")
	// The open file still works.
	buf := make([]byte, 3)
	if n, err := f.ReadAt(buf, 0); n != 3 || err != nil || string(buf) != "abc" {
		t.Fatalf("ReadAt after Remove = %d, %v, %q", n, err, buf)
	}
	f.Close()
	wantPathErr(t, fs.Remove("f"), os.ErrNotExist)

	if err := fs.MkdirAll("d", 0o755); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, fs, "d/f", nil).Close()
	wantPathErr(t, fs.Remove("d"), syscall.ENOTEMPTY)
	if err := fs.Remove("d/f"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Remove("d"); err != nil {
		t.Fatalf("Remove of an empty directory: %v", err)
	}
	wantNotExist(t, fs, "d")
}

func TestMemListStat(t *testing.T) {
	fs := vfs.NewMem()
	if err := fs.MkdirAll("/data/sub", 0o755); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	for _, name := range []string{"c", "a", "b.dat", "B"} {
		mustCreate(t, fs, "/data/"+name, []byte(name)).Close()
	}
	names, err := fs.List("/data")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"B", "a", "b.dat", "c", "sub"}; !slices.Equal(names, want) {
		t.Fatalf("List = %q, want %q", names, want)
	}
	if names, err := fs.List("/data/sub"); err != nil || len(names) != 0 {
		t.Fatalf("List(empty dir) = %q, %v", names, err)
	}
	if names, err := fs.List("/"); err != nil || !slices.Equal(names, []string{"data"}) {
		t.Fatalf("List(/) = %q, %v", names, err)
	}
	_, err = fs.List("/missing")
	wantPathErr(t, err, os.ErrNotExist)
	_, err = fs.List("/data/a")
	wantPathErr(t, err, syscall.ENOTDIR)

	fi, err := fs.Stat("data/b.dat")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Name() != "b.dat" || fi.Size() != 5 || fi.IsDir() || fi.Mode().IsDir() {
		t.Fatalf("Stat(file) = name %q size %d dir %v", fi.Name(), fi.Size(), fi.IsDir())
	}
	if fi.ModTime().Before(before.Add(-time.Second)) || fi.ModTime().After(time.Now().Add(time.Second)) {
		t.Fatalf("ModTime %v is not about now", fi.ModTime())
	}
	fi, err = fs.Stat("/data/sub/")
	if err != nil || fi.Name() != "sub" || !fi.IsDir() {
		t.Fatalf("Stat(dir) = %v, %v", fi, err)
	}
}

func TestMemSyncDirErrors(t *testing.T) {
	fs := vfs.NewMem()
	wantPathErr(t, fs.SyncDir("missing"), os.ErrNotExist)
	mustCreate(t, fs, "f", nil).Close()
	wantPathErr(t, fs.SyncDir("f"), syscall.ENOTDIR)
	if err := fs.SyncDir("/"); err != nil {
		t.Fatal(err)
	}
}

// newDurableDir returns a MemFS with a durable directory "d".
func newDurableDir(t *testing.T) *vfs.MemFS {
	t.Helper()
	fs := vfs.NewMem()
	if err := fs.MkdirAll("d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := fs.SyncDir("/"); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestCrashCloneFileData(t *testing.T) {
	fs := newDurableDir(t)
	f := mustCreate(t, fs, "d/f", []byte("durable"))
	if err := fs.SyncDir("d"); err != nil {
		t.Fatal(err)
	}
	// Created and in a synced directory, but no data synced yet.
	wantContents(t, fs.CrashClone(), "d/f", []byte{})

	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("LOST and more"), 3); err != nil {
		t.Fatal(err)
	}
	c := fs.CrashClone()
	wantContents(t, c, "d/f", []byte("durable"))
	wantContents(t, fs, "d/f", []byte("durLOST and more"))

	// A truncate is lost until synced, too.
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(2); err != nil {
		t.Fatal(err)
	}
	wantContents(t, fs.CrashClone(), "d/f", []byte("durLOST and more"))
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	wantContents(t, fs.CrashClone(), "d/f", []byte("du"))

	// Create's truncation of an existing file is not durable by itself.
	g := mustCreate(t, fs, "d/f", []byte("x"))
	wantContents(t, fs.CrashClone(), "d/f", []byte("du"))
	g.Close()

	// The clone is independent of the original, both ways.
	if _, err := f.WriteAt([]byte("orig"), 0); err != nil {
		t.Fatal(err)
	}
	cf, err := c.OpenReadWrite("d/f")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cf.WriteAt([]byte("CLONE"), 0); err != nil {
		t.Fatal(err)
	}
	cf.Close()
	wantContents(t, c, "d/f", []byte("CLONEle"))
	wantContents(t, fs, "d/f", []byte("orig"))
	f.Close()
}

func TestCrashCloneCreate(t *testing.T) {
	fs := newDurableDir(t)
	f := mustCreate(t, fs, "d/new", []byte("data"))
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// Data synced, directory not: the file does not survive.
	c := fs.CrashClone()
	wantNotExist(t, c, "d/new")
	if names, err := c.List("d"); err != nil || len(names) != 0 {
		t.Fatalf("clone lists %q, %v; want nothing", names, err)
	}
	if err := fs.SyncDir("d"); err != nil {
		t.Fatal(err)
	}
	wantContents(t, fs.CrashClone(), "d/new", []byte("data"))
	f.Close()
}

func TestCrashCloneMkdir(t *testing.T) {
	fs := vfs.NewMem()
	if err := fs.MkdirAll("a/b", 0o755); err != nil {
		t.Fatal(err)
	}
	wantNotExist(t, fs.CrashClone(), "a")
	if err := fs.SyncDir("/"); err != nil {
		t.Fatal(err)
	}
	c := fs.CrashClone()
	if fi, err := c.Stat("a"); err != nil || !fi.IsDir() {
		t.Fatalf("Stat(a) in clone = %v, %v", fi, err)
	}
	wantNotExist(t, c, "a/b")
	if err := fs.SyncDir("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.CrashClone().Stat("a/b"); err != nil {
		t.Fatalf("a/b after syncing a: %v", err)
	}
}

func TestCrashCloneRename(t *testing.T) {
	fs := newDurableDir(t)
	old := mustCreate(t, fs, "d/final", []byte("old"))
	old.Sync()
	old.Close()
	tmp := mustCreate(t, fs, "d/final.tmp", []byte("new"))
	tmp.Sync()
	tmp.Close()
	if err := fs.SyncDir("d"); err != nil {
		t.Fatal(err)
	}

	if err := fs.Rename("d/final.tmp", "d/final"); err != nil {
		t.Fatal(err)
	}
	wantContents(t, fs, "d/final", []byte("new"))
	wantNotExist(t, fs, "d/final.tmp")
	// The rename is undone by a crash before SyncDir.
	c := fs.CrashClone()
	wantContents(t, c, "d/final", []byte("old"))
	wantContents(t, c, "d/final.tmp", []byte("new"))

	if err := fs.SyncDir("d"); err != nil {
		t.Fatal(err)
	}
	c = fs.CrashClone()
	wantContents(t, c, "d/final", []byte("new"))
	wantNotExist(t, c, "d/final.tmp")
}

func TestCrashCloneRemove(t *testing.T) {
	fs := newDurableDir(t)
	f := mustCreate(t, fs, "d/f", []byte("keep"))
	f.Sync()
	f.Close()
	if err := fs.SyncDir("d"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Remove("d/f"); err != nil {
		t.Fatal(err)
	}
	// Re-creating the name does not hide the durable file either.
	mustCreate(t, fs, "d/f", []byte("other")).Close()
	wantContents(t, fs.CrashClone(), "d/f", []byte("keep"))
	if err := fs.Remove("d/f"); err != nil {
		t.Fatal(err)
	}
	wantContents(t, fs.CrashClone(), "d/f", []byte("keep"))
	if err := fs.SyncDir("d"); err != nil {
		t.Fatal(err)
	}
	wantNotExist(t, fs.CrashClone(), "d/f")
}

// TestCrashCloneRandom checks live and durable contents against a model
// through seeded random writes, truncates and syncs.
func TestCrashCloneRandom(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	fs := newDurableDir(t)
	f := mustCreate(t, fs, "d/f", nil)
	defer f.Close()
	if err := fs.SyncDir("d"); err != nil {
		t.Fatal(err)
	}
	var live, durable []byte
	for i := range 2000 {
		switch r := rng.IntN(10); {
		case r < 6:
			off := rng.IntN(len(live) + 64)
			p := make([]byte, rng.IntN(64)+1)
			for j := range p {
				p[j] = byte(rng.IntN(255) + 1)
			}
			if _, err := f.WriteAt(p, int64(off)); err != nil {
				t.Fatal(err)
			}
			if end := off + len(p); end > len(live) {
				live = append(live, make([]byte, end-len(live))...)
			}
			copy(live[off:], p)
		case r < 8:
			size := rng.IntN(len(live) + 32)
			if err := f.Truncate(int64(size)); err != nil {
				t.Fatal(err)
			}
			if size < len(live) {
				live = live[:size]
			} else {
				live = append(live, make([]byte, size-len(live))...)
			}
		default:
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			durable = bytes.Clone(live)
		}
		if i%10 == 0 {
			got, err := contents(fs.CrashClone(), "d/f")
			if err != nil || !bytes.Equal(got, durable) {
				t.Fatalf("seed %d step %d: durable contents differ from model (err %v)", seed, i, err)
			}
			if got, err := contents(fs, "d/f"); err != nil || !bytes.Equal(got, live) {
				t.Fatalf("seed %d step %d: live contents differ from model (err %v)", seed, i, err)
			}
		}
	}
}

func TestMemConcurrent(t *testing.T) {
	fs := newDurableDir(t)
	f := mustCreate(t, fs, "d/f", nil)
	defer f.Close()
	if err := fs.SyncDir("d"); err != nil {
		t.Fatal(err)
	}
	const writers, chunks, chunkSize = 8, 64, 128
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			chunk := bytes.Repeat([]byte{byte('a' + w)}, chunkSize)
			buf := make([]byte, chunkSize)
			for c := range chunks {
				off := int64((c*writers + w) * chunkSize)
				if _, err := f.WriteAt(chunk, off); err != nil {
					t.Error(err)
					return
				}
				// A region this goroutine wrote reads back intact.
				if n, err := f.ReadAt(buf, off); n != chunkSize || err != nil || !bytes.Equal(buf, chunk) {
					t.Errorf("ReadAt(%d) = %d, %v", off, n, err)
					return
				}
				if c%16 == 0 {
					if err := f.Sync(); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	// Metadata operations and crash clones run alongside.
	wg.Go(func() {
		for i := range 50 {
			name := fmt.Sprintf("d/g%d", i)
			g, err := fs.Create(name)
			if err != nil {
				t.Error(err)
				return
			}
			g.Close()
			fs.SyncDir("d")
			fs.CrashClone()
			if _, err := fs.Stat("d/f"); err != nil {
				t.Error(err)
			}
			if _, err := fs.List("d"); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got, err := contents(fs.CrashClone(), "d/f")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != writers*chunks*chunkSize {
		t.Fatalf("size %d, want %d", len(got), writers*chunks*chunkSize)
	}
	for i := 0; i < len(got); i += chunkSize {
		want := byte('a' + (i/chunkSize)%writers)
		if !bytes.Equal(got[i:i+chunkSize], bytes.Repeat([]byte{want}, chunkSize)) {
			t.Fatalf("chunk at %d is not all %q", i, want)
		}
	}
}

// TestCrashCloneTorn appends four pages after a synced prefix and
// overwrites a synced page, then takes torn clones: the synced prefix
// survives every one, each written page comes back old, new or zeroed on
// its own, the size is the durable or the live one, and a seed replays.
func TestCrashCloneTorn(t *testing.T) {
	fs := newDurableDir(t)
	const ps = vfs.PageSize
	prefix := bytes.Repeat([]byte("p"), 2*ps)
	f := mustCreate(t, fs, "d/f", prefix)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := fs.SyncDir("d"); err != nil {
		t.Fatal(err)
	}
	// Untouched since the sync: nothing to tear.
	wantContents(t, fs.CrashCloneTorn(1), "d/f", prefix)
	tail := bytes.Repeat([]byte("n"), 4*ps)
	if _, err := f.WriteAt(tail, 2*ps); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("NEW"), 10); err != nil { // overwrites synced page 0
		t.Fatal(err)
	}
	live, _ := contents(fs, "d/f")
	outcomes := map[string]bool{}
	sizes := map[int]bool{}
	for seed := uint64(0); seed < 200; seed++ {
		got, err := contents(fs.CrashCloneTorn(seed), "d/f")
		if err != nil {
			t.Fatal(err)
		}
		again, _ := contents(fs.CrashCloneTorn(seed), "d/f")
		if !bytes.Equal(got, again) {
			t.Fatalf("seed %d does not replay", seed)
		}
		sizes[len(got)] = true
		if len(got) != len(prefix) && len(got) != len(live) {
			t.Fatalf("seed %d: size %d", seed, len(got))
		}
		// Page 0: old, new, or its changed bytes zeroed.
		switch p0 := got[:ps]; {
		case bytes.Equal(p0, prefix[:ps]):
			outcomes["page 0 old"] = true
		case bytes.Equal(p0, live[:ps]):
			outcomes["page 0 new"] = true
		case bytes.Equal(p0[:10], prefix[:10]) && bytes.Equal(p0[10:13], []byte{0, 0, 0}) && bytes.Equal(p0[13:], prefix[13:ps]):
			outcomes["page 0 zeroed"] = true
		default:
			t.Fatalf("seed %d: page 0 is none of old, new, zeroed", seed)
		}
		if !bytes.Equal(got[ps:2*ps], prefix[ps:]) {
			t.Fatalf("seed %d: synced, unwritten page 1 changed", seed)
		}
		// Appended pages: new, or zeros (old and zeroed alike).
		for p := 2; p*ps < len(got); p++ {
			pg := got[p*ps : (p+1)*ps]
			switch {
			case bytes.Equal(pg, live[p*ps:(p+1)*ps]):
				outcomes["appended new"] = true
			case bytes.Equal(pg, make([]byte, ps)):
				outcomes["appended zero"] = true
			default:
				t.Fatalf("seed %d: page %d is neither new nor zero", seed, p)
			}
		}
	}
	if len(outcomes) != 5 || len(sizes) != 2 {
		t.Fatalf("200 seeds gave only %v, sizes %v", outcomes, sizes)
	}
	// The plain clone is the durable state, and the original is untouched.
	wantContents(t, fs.CrashClone(), "d/f", prefix)
	wantContents(t, fs, "d/f", live)
	f.Close()
}
