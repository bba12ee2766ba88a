//go:build linux && (amd64 || arm64)

package vfs

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// TestDirectReadThroughRing: where io_uring can be had, a direct file's
// reads go through the ring and read the file's bytes, a read past the end
// is short (io.EOF), and a misaligned read fails as pread's does.
func TestDirectReadThroughRing(t *testing.T) {
	on, why := RingStatus()
	t.Logf("io_uring: %v %s", on, why)
	if !on {
		t.Skip(why)
	}
	data, f := patternedFile(t, 5*DirectAlign+100, 7)
	d, err := OpenDirect(f)
	if err != nil {
		t.Skip(err)
	}
	defer d.Close()
	n0 := RingReads()
	buf := alignedBuf(8 * DirectAlign)
	if n, err := d.ReadAt(buf[:2*DirectAlign], DirectAlign); err != nil || n != 2*DirectAlign || !bytes.Equal(buf[:n], data[DirectAlign:3*DirectAlign]) {
		t.Fatalf("aligned read: %d, %v", n, err)
	}
	if n, err := d.ReadAt(buf[:2*DirectAlign], 4*DirectAlign); err != io.EOF || n != DirectAlign+100 || !bytes.Equal(buf[:n], data[4*DirectAlign:]) {
		t.Fatalf("read past the end: %d, %v; want %d bytes and io.EOF", n, err, DirectAlign+100)
	}
	if _, err := d.ReadAt(buf[1:DirectAlign+1], 0); err == nil {
		t.Fatal("misaligned direct read succeeded")
	}
	if got := RingReads() - n0; got != 3 {
		t.Fatalf("%d reads through the ring, want 3", got)
	}
}

// TestRingConcurrent: many goroutines reading through the ring at once,
// more than it has places, each get their own bytes (run with -race).
func TestRingConcurrent(t *testing.T) {
	if on, why := RingStatus(); !on {
		t.Skip(why)
	}
	path := filepath.Join(t.TempDir(), "f")
	data := make([]byte, 64*DirectAlign)
	for i := range data {
		data[i] = byte(i/DirectAlign + i)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 2*ringEntries)
	for g := range 2 * ringEntries {
		wg.Go(func() {
			off := int64(g%64) * DirectAlign
			b := make([]byte, DirectAlign)
			n, ok, err := RingPread(int(f.Fd()), b, off)
			if !ok || err != nil || n != DirectAlign || !bytes.Equal(b, data[off:off+DirectAlign]) {
				errs <- errors.New("a concurrent read through the ring returned other bytes")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestRingRefused: where the system refuses io_uring (EPERM, as with
// kernel.io_uring_disabled), RingStatus says why, RingPread declines, and
// direct files read with pread, correctly.
func TestRingRefused(t *testing.T) {
	saved, savedErr := theRing, theRingErr
	orig := newRing
	newRing = func() (*ring, error) { return nil, os.NewSyscallError("io_uring_setup", syscall.EPERM) }
	theRing, theRingErr, theRingOnce = nil, nil, sync.Once{}
	defer func() {
		newRing = orig
		theRing, theRingErr, theRingOnce = saved, savedErr, sync.Once{}
		if saved != nil || savedErr != nil {
			theRingOnce.Do(func() {}) // as it was; else set up on next use
		}
	}()
	if on, why := RingStatus(); on || why == "" {
		t.Fatalf("refused: on %v, why %q", on, why)
	}
	data, f := patternedFile(t, 3*DirectAlign, 3)
	if _, ok, _ := RingPread(int(0), make([]byte, 8), 0); ok {
		t.Fatal("RingPread read with no ring")
	}
	d, err := OpenDirect(f)
	if err != nil {
		t.Skip(err)
	}
	defer d.Close()
	buf := alignedBuf(3 * DirectAlign)
	if n, err := d.ReadAt(buf, 0); err != nil || n != len(data) || !bytes.Equal(buf, data) {
		t.Fatalf("direct read without a ring: %d, %v", n, err)
	}
	if RingReads() != 0 {
		t.Fatal("reads counted through a ring that is not there")
	}
}

// patternedFile writes n bytes, byte i being i*mul, to a new file and
// opens it with Default; the file closes when the test ends.
func patternedFile(t *testing.T, n, mul int) ([]byte, File) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f")
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i * mul)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Default.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return data, f
}
