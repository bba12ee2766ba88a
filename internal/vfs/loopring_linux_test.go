//go:build linux && (amd64 || arm64)

package vfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// loopRingFile writes a file of n patterned bytes and opens it (flags as
// for open(2)), returning its descriptor and bytes.
func loopRingFile(t *testing.T, n, flags int) (int, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f")
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*11 + i/251)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|flags, 0)
	if err != nil {
		t.Skipf("open: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	return fd, data
}

// waitReadable waits (in poll(2), as an event loop's epoll would) for the
// ring's eventfd to signal, failing the test after a minute.
func waitReadable(t *testing.T, fd int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 1000)
		if n == 1 {
			return
		}
		if err != nil && err != unix.EINTR {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the ring's eventfd never signalled")
		}
	}
}

// TestLoopRing: reads submitted to a ring of one owner complete with
// their tags and the file's bytes, signalled on its eventfd (a read past
// the end short, as pread's); a full ring refuses a read with ErrRingFull
// and takes one again once a place is reaped; Close waits for the reads
// in flight and reports each.
func TestLoopRing(t *testing.T) {
	lr, err := NewLoopRing(4)
	if err != nil {
		t.Skip(err)
	}
	fd, data := loopRingFile(t, 64<<10+100, 0)
	bufs := make([][]byte, 4)
	offs := []int64{0, 4096, 60 << 10, 64 << 10}
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
		if err := lr.Read(fd, bufs[i], offs[i], uint64(100+i)); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	if lr.InFlight() != 4 {
		t.Fatalf("%d in flight, want 4", lr.InFlight())
	}
	if err := lr.Read(fd, make([]byte, 4096), 0, 9); !errors.Is(err, ErrRingFull) {
		t.Fatalf("fifth read on a ring of 4: %v, want ErrRingFull", err)
	}
	got := map[uint64]int{}
	for len(got) < 4 {
		waitReadable(t, lr.EventFD())
		lr.Reap(func(tag uint64, n int, err error) {
			if err != nil {
				t.Fatalf("tag %d: %v", tag, err)
			}
			if _, dup := got[tag]; dup {
				t.Fatalf("tag %d reaped twice", tag)
			}
			got[tag] = n
		})
	}
	for i := range bufs {
		n, ok := got[uint64(100+i)]
		want := min(4096, len(data)-int(offs[i]))
		if !ok || n != want || !bytes.Equal(bufs[i][:n], data[offs[i]:offs[i]+int64(n)]) {
			t.Fatalf("read %d at %d: %d bytes (reaped %v), want %d of the file's", i, offs[i], n, ok, want)
		}
	}
	if lr.InFlight() != 0 {
		t.Fatalf("%d in flight after reaping all", lr.InFlight())
	}
	// Places come back: a ring of 4 reads four times as many.
	for round := range 4 {
		for i := range bufs {
			if err := lr.Read(fd, bufs[i], int64(i)*8192, uint64(round*10+i)); err != nil {
				t.Fatalf("round %d read %d: %v", round, i, err)
			}
		}
		if round < 3 {
			for n := 0; n < 4; {
				waitReadable(t, lr.EventFD())
				lr.Reap(func(uint64, int, error) { n++ })
			}
		}
	}
	// Close with four reads in flight: each is reported, its buffer
	// filled, before Close returns.
	closed := 0
	lr.Close(func(tag uint64, n int, err error) {
		i := int(tag % 10)
		if err != nil || n != 4096 || !bytes.Equal(bufs[i], data[i*8192:i*8192+4096]) {
			t.Errorf("tag %d at close: %d, %v", tag, n, err)
		}
		closed++
	})
	if closed != 4 {
		t.Fatalf("Close reported %d reads, want 4", closed)
	}
	if err := lr.Read(fd, bufs[0], 0, 1); err == nil {
		t.Fatal("a closed ring took a read")
	}
	lr.Close(nil) // again: nothing
}

// TestLoopRingErrors: a read the kernel fails (a misaligned O_DIRECT
// read, EINVAL) completes with its errno; a refused system reports why.
func TestLoopRingErrors(t *testing.T) {
	lr, err := NewLoopRing(2)
	if err != nil {
		t.Skip(err)
	}
	defer lr.Close(func(uint64, int, error) {})
	fd, _ := loopRingFile(t, 3*DirectAlign, syscall.O_DIRECT)
	buf := alignedBuf(2 * DirectAlign)
	if err := lr.Read(fd, buf[1:DirectAlign+1], 0, 7); err != nil {
		t.Fatal(err)
	}
	var got error
	for lr.InFlight() > 0 {
		waitReadable(t, lr.EventFD())
		lr.Reap(func(tag uint64, n int, err error) {
			if tag != 7 {
				t.Fatalf("tag %d, want 7", tag)
			}
			got = err
		})
	}
	if !errors.Is(got, syscall.EINVAL) {
		t.Fatalf("misaligned direct read: %v, want EINVAL", got)
	}

	orig := newLoopRing
	newLoopRing = func(int) (*LoopRing, error) { return nil, os.NewSyscallError("io_uring_setup", syscall.EPERM) }
	defer func() { newLoopRing = orig }()
	if r, err := NewLoopRing(8); r != nil || !errors.Is(err, syscall.EPERM) {
		t.Fatalf("refused: %v, %v", r, err)
	}
}
