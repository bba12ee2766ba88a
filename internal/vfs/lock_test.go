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
