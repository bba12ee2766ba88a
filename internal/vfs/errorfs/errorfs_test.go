package errorfs_test

import (
	"errors"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/internal/vfs/errorfs"
)

// recorder is an injector that records every op it sees.
type recorder struct {
	mu  sync.Mutex
	ops []errorfs.Op
}

func (r *recorder) MaybeError(op errorfs.Op) error {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
	return nil
}

// newMem returns a MemFS with a durable directory "d".
func newMem(t *testing.T) *vfs.MemFS {
	t.Helper()
	m := vfs.NewMem()
	if err := m.MkdirAll("d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := m.SyncDir("/"); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestOpKindString(t *testing.T) {
	kinds := []errorfs.OpKind{
		errorfs.OpCreate, errorfs.OpOpen, errorfs.OpRemove, errorfs.OpRename,
		errorfs.OpMkdir, errorfs.OpSyncDir, errorfs.OpList, errorfs.OpStat,
		errorfs.OpRead, errorfs.OpWrite, errorfs.OpSync, errorfs.OpTruncate,
		errorfs.OpSize, errorfs.OpClose,
	}
	seen := map[string]bool{}
	for _, k := range kinds {
		s := k.String()
		if s == "" || seen[s] {
			t.Fatalf("OpKind(%d).String() = %q: empty or duplicate", int(k), s)
		}
		seen[s] = true
	}
	if got := errorfs.OpWrite.String(); got != "write" {
		t.Fatalf("OpWrite.String() = %q", got)
	}
	if got := errorfs.OpKind(99).String(); got != "OpKind(99)" {
		t.Fatalf("OpKind(99).String() = %q", got)
	}
}

// TestOps checks that every operation reaches the injector once, with its
// kind, path, offset and length, and then reaches the wrapped FS.
func TestOps(t *testing.T) {
	mem := newMem(t)
	var rec recorder
	fs := errorfs.Wrap(mem, &rec)

	f, err := fs.Create("d/f")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("hello"), 3)
	f.ReadAt(make([]byte, 4), 2)
	f.Sync()
	f.Truncate(7)
	f.Size()
	f.Close()
	g, _ := fs.Open("d/f")
	g.Close()
	h, _ := fs.OpenReadWrite("d/h")
	h.Close()
	fs.Rename("d/h", "d/i")
	fs.Remove("d/i")
	fs.MkdirAll("d/e", 0o755)
	fs.SyncDir("d")
	fs.List("d")
	fs.Stat("d/f")

	want := []errorfs.Op{
		{Kind: errorfs.OpCreate, Path: "d/f"},
		{Kind: errorfs.OpWrite, Path: "d/f", Off: 3, Len: 5},
		{Kind: errorfs.OpRead, Path: "d/f", Off: 2, Len: 4},
		{Kind: errorfs.OpSync, Path: "d/f"},
		{Kind: errorfs.OpTruncate, Path: "d/f", Off: 7},
		{Kind: errorfs.OpSize, Path: "d/f"},
		{Kind: errorfs.OpClose, Path: "d/f"},
		{Kind: errorfs.OpOpen, Path: "d/f"},
		{Kind: errorfs.OpClose, Path: "d/f"},
		{Kind: errorfs.OpOpen, Path: "d/h"},
		{Kind: errorfs.OpClose, Path: "d/h"},
		{Kind: errorfs.OpRename, Path: "d/h", NewPath: "d/i"},
		{Kind: errorfs.OpRemove, Path: "d/i"},
		{Kind: errorfs.OpMkdir, Path: "d/e"},
		{Kind: errorfs.OpSyncDir, Path: "d"},
		{Kind: errorfs.OpList, Path: "d"},
		{Kind: errorfs.OpStat, Path: "d/f"},
	}
	if !slices.Equal(rec.ops, want) {
		t.Fatalf("ops:\n got %v\nwant %v", rec.ops, want)
	}

	// The operations reached the wrapped FS.
	c := mem.CrashClone()
	names, err := c.List("d")
	if err != nil || !slices.Equal(names, []string{"e", "f"}) {
		t.Fatalf("durable names %q, %v", names, err)
	}
	if fi, err := c.Stat("d/f"); err != nil || fi.Size() != 8 {
		t.Fatalf("durable d/f: %v, %v; want size 8 (synced before truncate)", fi, err)
	}
	if fi, err := mem.Stat("d/f"); err != nil || fi.Size() != 7 {
		t.Fatalf("live d/f: %v, %v; want size 7", fi, err)
	}
}

func TestCounterOneReadOnePread(t *testing.T) {
	var c errorfs.Counter
	fs := errorfs.Wrap(newMem(t), &c)
	f, err := fs.Create("d/vol")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1000)
	if _, err := f.ReadAt(buf, 100); err != nil {
		t.Fatal(err)
	}
	if got := c.Count(errorfs.OpRead); got != 1 {
		t.Fatalf("one ReadAt counted %d OpRead", got)
	}
	if got := c.Count(errorfs.OpWrite); got != 1 {
		t.Fatalf("one WriteAt counted %d OpWrite", got)
	}
	if got := c.Count(errorfs.OpCreate); got != 1 {
		t.Fatalf("one Create counted %d OpCreate", got)
	}
	if got := c.Count(errorfs.OpSync); got != 0 {
		t.Fatalf("counted %d OpSync without a Sync", got)
	}
	if got := c.Count(errorfs.OpKind(-1)); got != 0 {
		t.Fatalf("Count(invalid) = %d", got)
	}
	c.Reset()
	if got := c.Count(errorfs.OpRead); got != 0 {
		t.Fatalf("after Reset, OpRead count %d", got)
	}
}

func TestCounterConcurrent(t *testing.T) {
	var c errorfs.Counter
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				c.MaybeError(errorfs.Op{Kind: errorfs.OpWrite})
			}
		})
	}
	wg.Wait()
	if got := c.Count(errorfs.OpWrite); got != 8000 {
		t.Fatalf("Count = %d, want 8000", got)
	}
}

func TestOnKind(t *testing.T) {
	mem := newMem(t)
	fs := errorfs.Wrap(mem, errorfs.OnKind(errorfs.OpWrite, syscall.ENOSPC))
	f, err := fs.Create("d/f")
	if err != nil {
		t.Fatalf("Create failed under a write injector: %v", err)
	}
	defer f.Close()
	n, err := f.WriteAt([]byte("abc"), 0)
	if n != 0 || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("WriteAt = %d, %v; want 0, ENOSPC", n, err)
	}
	var pe *os.PathError
	if !errors.As(err, &pe) || pe.Path != "d/f" || pe.Op != "write" {
		t.Fatalf("error %#v is not a PathError for write d/f", err)
	}
	// The write did not happen.
	if size, err := f.Size(); size != 0 || err != nil {
		t.Fatalf("Size = %d, %v after a failed write", size, err)
	}
	// Other kinds proceed.
	if err := f.Truncate(5); err != nil {
		t.Fatal(err)
	}

	// A failed Sync leaves the data undurable.
	fs = errorfs.Wrap(mem, errorfs.OnKind(errorfs.OpSync, syscall.EIO))
	g, err := fs.Create("d/g")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	mem.SyncDir("d")
	g.WriteAt([]byte("data"), 0)
	if err := g.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Sync = %v, want EIO", err)
	}
	if fi, err := mem.CrashClone().Stat("d/g"); err != nil || fi.Size() != 0 {
		t.Fatalf("after failed sync, durable d/g: %v, %v; want size 0", fi, err)
	}

	// A failed Remove removes nothing; a failed Rename is a LinkError.
	fs = errorfs.Wrap(mem, errorfs.Chain(
		errorfs.OnKind(errorfs.OpRemove, errorfs.ErrInjected),
		errorfs.OnKind(errorfs.OpRename, syscall.EIO),
	))
	if err := fs.Remove("d/g"); !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("Remove = %v", err)
	}
	if _, err := mem.Stat("d/g"); err != nil {
		t.Fatalf("d/g removed despite the injected error: %v", err)
	}
	err = fs.Rename("d/g", "d/h")
	var le *os.LinkError
	if !errors.As(err, &le) || le.New != "d/h" || !errors.Is(err, syscall.EIO) {
		t.Fatalf("Rename = %#v, want *os.LinkError wrapping EIO", err)
	}
	if _, err := mem.Stat("d/h"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("d/h exists despite the injected error: %v", err)
	}
}

func TestInjectedPathErrorKept(t *testing.T) {
	want := &os.PathError{Op: "custom", Path: "x", Err: syscall.EROFS}
	fs := errorfs.Wrap(newMem(t), errorfs.OnKind(errorfs.OpMkdir, want))
	if err := fs.MkdirAll("d/x", 0o755); err != want {
		t.Fatalf("MkdirAll = %v, want the injected error itself", err)
	}
}

func TestOnPath(t *testing.T) {
	mem := newMem(t)
	fs := errorfs.Wrap(mem, errorfs.OnPath(".dat", errorfs.OnKind(errorfs.OpCreate, syscall.EIO)))
	if _, err := fs.Create("d/1.dat"); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Create(.dat) = %v, want EIO", err)
	}
	f, err := fs.Create("d/1.idx")
	if err != nil {
		t.Fatalf("Create(.idx) = %v", err)
	}
	f.Close()

	// A rename matches on its new path as well as its old one.
	fs = errorfs.Wrap(mem, errorfs.OnPath(".dat", errorfs.OnKind(errorfs.OpRename, syscall.EIO)))
	if err := fs.Rename("d/1.idx", "d/1.dat"); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Rename onto .dat = %v, want EIO", err)
	}
	if err := fs.Rename("d/1.idx", "d/2.idx"); err != nil {
		t.Fatalf("Rename of .idx = %v", err)
	}
}

func TestAfter(t *testing.T) {
	var c errorfs.Counter
	inj := errorfs.Chain(&c, errorfs.After(2, errorfs.OnKind(errorfs.OpWrite, syscall.ENOSPC)))
	fs := errorfs.Wrap(newMem(t), inj)
	f, err := fs.Create("d/f")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var results []bool
	for i := range 5 {
		_, err := f.WriteAt([]byte("x"), int64(i))
		results = append(results, err == nil)
		// Unmatched operations in between do not count.
		if _, err := f.Size(); err != nil {
			t.Fatal(err)
		}
	}
	if want := []bool{true, true, false, false, false}; !slices.Equal(results, want) {
		t.Fatalf("write successes %v, want %v", results, want)
	}
	if size, _ := f.Size(); size != 2 {
		t.Fatalf("size %d, want 2", size)
	}
	if got := c.Count(errorfs.OpWrite); got != 5 {
		t.Fatalf("Counter before the injector counted %d writes, want 5", got)
	}
}

func TestOnce(t *testing.T) {
	inj := errorfs.Once(errorfs.OnKind(errorfs.OpSync, syscall.EIO))
	fs := errorfs.Wrap(newMem(t), inj)
	f, err := fs.Create("d/f")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("first Sync = %v, want EIO", err)
	}
	for range 3 {
		if err := f.Sync(); err != nil {
			t.Fatalf("later Sync = %v, want nil", err)
		}
	}

	// Exactly one of many concurrent operations gets the error.
	inj = errorfs.Once(errorfs.InjectorFunc(func(errorfs.Op) error { return errorfs.ErrInjected }))
	var failures atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 100 {
				if inj.MaybeError(errorfs.Op{}) != nil {
					failures.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := failures.Load(); got != 1 {
		t.Fatalf("%d failures, want 1", got)
	}
}

func TestToggle(t *testing.T) {
	tog := errorfs.NewToggle(errorfs.OnKind(errorfs.OpStat, syscall.EIO))
	fs := errorfs.Wrap(newMem(t), tog)
	if tog.Enabled() {
		t.Fatal("a new Toggle is enabled")
	}
	if _, err := fs.Stat("d"); err != nil {
		t.Fatalf("disabled: Stat = %v", err)
	}
	tog.Enable()
	if _, err := fs.Stat("d"); !errors.Is(err, syscall.EIO) {
		t.Fatalf("enabled: Stat = %v, want EIO", err)
	}
	if _, err := fs.List("d"); err != nil {
		t.Fatalf("enabled, other kind: List = %v", err)
	}
	tog.Disable()
	if _, err := fs.Stat("d"); err != nil {
		t.Fatalf("disabled again: Stat = %v", err)
	}
}

func TestInjectorFunc(t *testing.T) {
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpRead && op.Off >= 100 {
			return syscall.EIO
		}
		return nil
	})
	fs := errorfs.Wrap(newMem(t), inj)
	f, err := fs.Create("d/f")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteAt(make([]byte, 200), 0)
	if _, err := f.ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatalf("ReadAt(0) = %v", err)
	}
	if _, err := f.ReadAt(make([]byte, 10), 150); !errors.Is(err, syscall.EIO) {
		t.Fatalf("ReadAt(150) = %v, want EIO", err)
	}
}

func TestShortWrite(t *testing.T) {
	mem := newMem(t)
	fs := errorfs.Wrap(mem, errorfs.Once(errorfs.ShortWrite(3)))
	f, err := fs.Create("d/f")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := f.WriteAt([]byte("abcdef"), 2)
	if n != 3 || !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("WriteAt = %d, %v; want 3, io.ErrShortWrite", n, err)
	}
	var pe *os.PathError
	if !errors.As(err, &pe) || pe.Path != "d/f" {
		t.Fatalf("error %#v is not a PathError naming the file", err)
	}
	buf := make([]byte, 10)
	got, _ := f.ReadAt(buf, 0)
	if string(buf[:got]) != "\x00\x00abc" {
		t.Fatalf("file holds %q, want the first 3 bytes at offset 2", buf[:got])
	}
	// Once: the next write is whole.
	if n, err := f.WriteAt([]byte("XYZ"), 5); n != 3 || err != nil {
		t.Fatalf("second WriteAt = %d, %v", n, err)
	}

	// A short write reporting a full disk, and N beyond the buffer.
	fs = errorfs.Wrap(mem, errorfs.OnKind(errorfs.OpWrite, &errorfs.ShortWriteError{N: 100, Err: syscall.ENOSPC}))
	g, err := fs.Create("d/g")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	n, err = g.WriteAt([]byte("abc"), 0)
	if n != 3 || !errors.Is(err, syscall.ENOSPC) || errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("WriteAt = %d, %v; want 3, ENOSPC", n, err)
	}

	// Zero bytes written.
	fs = errorfs.Wrap(mem, errorfs.ShortWrite(0))
	h, err := fs.Create("d/h")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if n, err := h.WriteAt([]byte("abc"), 0); n != 0 || !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("WriteAt = %d, %v; want 0, io.ErrShortWrite", n, err)
	}
	if size, _ := h.Size(); size != 0 {
		t.Fatalf("size %d after a zero-byte short write", size)
	}

	// For other kinds the error is returned as is.
	fs = errorfs.Wrap(mem, errorfs.OnKind(errorfs.OpSync, &errorfs.ShortWriteError{N: 1}))
	k, err := fs.Create("d/k")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	var se *errorfs.ShortWriteError
	if err := k.Sync(); !errors.As(err, &se) {
		t.Fatalf("Sync = %v, want the ShortWriteError", err)
	}
}

func TestCloseInjected(t *testing.T) {
	var c errorfs.Counter
	fs := errorfs.Wrap(newMem(t), errorfs.Chain(&c, errorfs.Once(errorfs.OnKind(errorfs.OpClose, syscall.EIO))))
	f, err := fs.Create("d/f")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Close = %v, want EIO", err)
	}
	// The underlying file is still open, so a second Close succeeds.
	if err := f.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("third Close = %v, want ErrClosed", err)
	}
	if got := c.Count(errorfs.OpClose); got != 3 {
		t.Fatalf("counted %d closes, want 3", got)
	}
}

// TestWrapOS checks the wrapper over the OS file system.
func TestWrapOS(t *testing.T) {
	dir := t.TempDir()
	var c errorfs.Counter
	tog := errorfs.NewToggle(errorfs.OnKind(errorfs.OpSyncDir, syscall.EIO))
	fs := errorfs.Wrap(vfs.Default, errorfs.Chain(&c, tog))
	f, err := fs.Create(dir + "/f")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("abc"), 0); err != nil {
		t.Fatal(err)
	}
	if err := fs.SyncDir(dir); err != nil {
		t.Fatal(err)
	}
	tog.Enable()
	if err := fs.SyncDir(dir); !errors.Is(err, syscall.EIO) {
		t.Fatalf("SyncDir = %v, want EIO", err)
	}
	buf := make([]byte, 3)
	if n, err := f.ReadAt(buf, 0); n != 3 || err != nil || string(buf) != "abc" {
		t.Fatalf("ReadAt = %d, %v, %q", n, err, buf)
	}
	if c.Count(errorfs.OpSyncDir) != 2 || c.Count(errorfs.OpRead) != 1 {
		t.Fatalf("counts: syncdir %d read %d", c.Count(errorfs.OpSyncDir), c.Count(errorfs.OpRead))
	}
}
