package vfs

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestLock(t *testing.T) {
	dir := t.TempDir()
	mem := NewMem()
	if err := mem.MkdirAll("/d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mem.SyncDir("/"); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		fs   FS
		path string
	}{"os": {Default, filepath.Join(dir, "LOCK")}, "mem": {mem, "/d/LOCK"}} {
		t.Run(name, func(t *testing.T) {
			l, err := c.fs.Lock(c.path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.fs.Lock(c.path); !errors.Is(err, ErrLocked) {
				t.Fatalf("second lock: %v, want ErrLocked", err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l2, err := c.fs.Lock(c.path)
			if err != nil {
				t.Fatalf("lock after release: %v", err)
			}
			l2.Close()
		})
	}
	l, err := mem.Lock("/d/LOCK")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	clone := mem.CrashClone()
	cl, err := clone.Lock("/d/LOCK")
	if err != nil {
		t.Fatalf("a power cut must release locks: %v", err)
	}
	cl.Close()
}

func TestWriteFileAtomic(t *testing.T) {
	m := NewMem()
	if err := m.MkdirAll("/d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := m.SyncDir("/"); err != nil {
		t.Fatal(err)
	}
	for _, content := range []string{"first", "second, longer"} {
		if err := WriteFileAtomic(m, "/d/f", []byte(content)); err != nil {
			t.Fatal(err)
		}
		// Durable at once: a power cut right after keeps it whole.
		c := m.CrashClone()
		f, err := c.Open("/d/f")
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 64)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		if string(b[:n]) != content {
			t.Fatalf("after a power cut: %q, want %q", b[:n], content)
		}
	}
	if _, err := m.Stat("/d/f.tmp"); err == nil {
		t.Fatal("temporary file left behind")
	}
}
