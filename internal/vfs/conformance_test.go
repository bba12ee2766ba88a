package vfs_test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
)

// classify describes an error by its type and the well-known error it
// wraps, which is what callers may depend on.
func classify(err error) string {
	if err == nil {
		return "ok"
	}
	if err == io.EOF {
		return "EOF"
	}
	typ := fmt.Sprintf("%T", err)
	for _, e := range []struct {
		name string
		err  error
	}{
		{"ENOTEMPTY", syscall.ENOTEMPTY},
		{"ErrNotExist", os.ErrNotExist},
		{"ErrExist", os.ErrExist},
		{"ErrClosed", os.ErrClosed},
		{"ENOTDIR", syscall.ENOTDIR},
		{"EISDIR", syscall.EISDIR},
		{"EBADF", syscall.EBADF},
		{"EINVAL", syscall.EINVAL},
	} {
		if errors.Is(err, e.err) {
			return typ + " " + e.name
		}
	}
	return typ + " other"
}

// scenario exercises fs under root and returns a transcript of results.
func scenario(fs vfs.FS, root string) []string {
	var out []string
	p := func(name string) string { return filepath.Join(root, name) }
	log := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	readAll := func(name string) string {
		b, err := contents(fs, name)
		return fmt.Sprintf("%q %s", b, classify(err))
	}

	log("mkdir %s", classify(fs.MkdirAll(p("a/b"), 0o755)))
	log("mkdir again %s", classify(fs.MkdirAll(p("a/b"), 0o755)))
	_, err := fs.Create(p("nodir/f"))
	log("create in missing dir %s", classify(err))

	f, err := fs.Create(p("a/f"))
	log("create %s", classify(err))
	n, err := f.WriteAt([]byte("hello"), 0)
	log("write %d %s", n, classify(err))
	n, err = f.WriteAt([]byte("world"), 8)
	log("write past end %d %s", n, classify(err))
	size, err := f.Size()
	log("size %d %s", size, classify(err))
	buf := make([]byte, 6)
	n, err = f.ReadAt(buf, 10)
	log("short read %d %q %s", n, buf[:n], classify(err))
	n, err = f.ReadAt(buf, 13)
	log("read at end %d %s", n, classify(err))
	n, err = f.ReadAt(buf, 0)
	log("read %d %q %s", n, buf[:n], classify(err))
	log("sync %s", classify(f.Sync()))
	log("truncate %s", classify(f.Truncate(3)))
	log("truncate grow %s", classify(f.Truncate(6)))
	log("truncate negative %s", classify(f.Truncate(-1)))
	log("contents %s", readAll(p("a/f")))
	log("close %s", classify(f.Close()))
	log("close again %s", classify(f.Close()))
	_, err = f.ReadAt(buf, 0)
	log("read closed %s", classify(err))
	_, err = f.WriteAt(buf, 0)
	log("write closed %s", classify(err))
	log("sync closed %s", classify(f.Sync()))
	_, err = f.Size()
	log("size closed %s", classify(err))

	r, err := fs.Open(p("a/f"))
	log("open %s", classify(err))
	_, err = r.WriteAt([]byte("x"), 0)
	log("write read-only %s", classify(err))
	log("truncate read-only %s", classify(r.Truncate(0)))
	log("sync read-only %s", classify(r.Sync()))
	r.Close()
	_, err = fs.Open(p("a/missing"))
	log("open missing %s", classify(err))

	rw, err := fs.OpenReadWrite(p("a/f"))
	log("open rw existing %s", classify(err))
	size, _ = rw.Size()
	log("size rw existing %d", size)
	rw.Close()
	rw, err = fs.OpenReadWrite(p("a/g"))
	log("open rw new %s", classify(err))
	rw.Close()
	c, err := fs.Create(p("a/f"))
	log("create existing %s", classify(err))
	size, _ = c.Size()
	log("size after create %d", size)
	c.WriteAt([]byte("F"), 0)
	c.Close()

	fi, err := fs.Stat(p("a/f"))
	log("stat file %s %s %d %v", classify(err), fi.Name(), fi.Size(), fi.IsDir())
	fi, err = fs.Stat(p("a/b"))
	log("stat dir %s %s %v", classify(err), fi.Name(), fi.IsDir())
	_, err = fs.Stat(p("a/missing"))
	log("stat missing %s", classify(err))
	_, err = fs.Stat(p("a/f/x"))
	log("stat under file %s", classify(err))
	log("mkdir under file %s", classify(fs.MkdirAll(p("a/f/x"), 0o755)))

	names, err := fs.List(p("a"))
	log("list %q %s", names, classify(err))
	_, err = fs.List(p("missing"))
	log("list missing %s", classify(err))

	log("rename replace %s", classify(fs.Rename(p("a/f"), p("a/g"))))
	log("after rename g %s", readAll(p("a/g")))
	_, err = fs.Stat(p("a/f"))
	log("after rename f %s", classify(err))
	log("rename missing %s", classify(fs.Rename(p("a/f"), p("a/h"))))
	log("rename onto dir %s", classify(fs.Rename(p("a/g"), p("a/b"))))
	log("rename dir %s", classify(fs.Rename(p("a/b"), p("c"))))
	names, _ = fs.List(root)
	log("list root %q", names)

	log("syncdir %s", classify(fs.SyncDir(p("a"))))
	log("syncdir missing %s", classify(fs.SyncDir(p("missing"))))

	log("remove nonempty %s", classify(fs.Remove(p("a"))))
	log("remove file %s", classify(fs.Remove(p("a/g"))))
	log("remove missing %s", classify(fs.Remove(p("a/g"))))
	log("remove empty dir %s", classify(fs.Remove(p("a"))))
	names, _ = fs.List(root)
	log("list root %q", names)
	return out
}

func TestConformance(t *testing.T) {
	osOut := scenario(vfs.Default, t.TempDir())
	mem := vfs.NewMem()
	if err := mem.MkdirAll("/root", 0o755); err != nil {
		t.Fatal(err)
	}
	memOut := scenario(mem, "/root")
	if len(osOut) != len(memOut) {
		t.Fatalf("transcripts differ in length: %d vs %d", len(osOut), len(memOut))
	}
	var diff []string
	for i := range osOut {
		if osOut[i] != memOut[i] {
			diff = append(diff, fmt.Sprintf("os:  %s\nmem: %s", osOut[i], memOut[i]))
		}
	}
	if len(diff) > 0 {
		t.Fatalf("MemFS differs from the OS:\n%s", strings.Join(diff, "\n"))
	}
	// Guard against a scenario that passes because nothing happened.
	if !strings.Contains(strings.Join(osOut, "\n"), `after rename g "F" ok`) {
		t.Fatalf("unexpected transcript:\n%s", strings.Join(osOut, "\n"))
	}
}
