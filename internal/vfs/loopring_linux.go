//go:build linux && (amd64 || arm64)

package vfs

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// A ring of one owner.
//
// The process's ring (uring_linux.go) serves goroutines that wait for
// their reads: each parks, and one goroutine hands each completion to its
// reader. An event loop has no goroutine to park: it submits a read and
// goes on serving its other connections, and learns of the completion
// as of any other event, from its epoll set. A LoopRing is an io_uring of
// its own for such an owner: no lock (only the owner touches it), no
// reaping goroutine; its completions signal an eventfd, which the owner
// watches with the rest of its descriptors (EPOLLIN), and then reaps.
// The ring's layout is the process ring's (see there).

// ErrRingFull is returned by LoopRing.Read when as many reads as the ring
// has places are in flight: the caller reads some other way.
var ErrRingFull = errors.New("vfs: io_uring full")

// LoopRing is an io_uring used by one goroutine at a time (an event
// loop): it submits reads that do not wait, and reaps their completions
// when its eventfd (EventFD) is readable. Not safe for concurrent use.
type LoopRing struct {
	r      ring
	maps   ringMaps
	efd    int
	places int

	// bufs keeps each read's buffer referenced until its completion is
	// reaped, by its user_data's place; free lists the free places.
	bufs     [][]byte
	tags     []uint64
	free     []uint32
	inFlight int
	closed   bool
}

// newLoopRing sets a ring up; a variable so that tests can make the
// system refuse io_uring.
var newLoopRing = openLoopRing

// NewLoopRing sets up a ring with room for entries reads in flight (at
// most 4096; rounded up to a power of two by the kernel), or returns why
// it cannot (ENOSYS on an old kernel; EPERM where io_uring is disabled or
// filtered; ENOTSUP before Linux 5.4): the caller then reads some other
// way.
func NewLoopRing(entries int) (*LoopRing, error) {
	return newLoopRing(entries)
}

func openLoopRing(entries int) (*LoopRing, error) {
	entries = min(max(entries, 1), 4096)
	lr := &LoopRing{}
	m, efd, err := openRing(&lr.r, uint32(entries))
	if err != nil {
		return nil, err
	}
	lr.maps, lr.efd, lr.places = m, efd, m.n
	lr.bufs = make([][]byte, m.n)
	lr.tags = make([]uint64, m.n)
	lr.free = make([]uint32, m.n)
	for i := range lr.free {
		lr.free[i] = uint32(m.n - 1 - i)
	}
	return lr, nil
}

// EventFD returns the descriptor the ring signals completions on
// (non-blocking; readable while completions wait to be reaped). It
// belongs to the ring: watch it, never read or close it.
func (lr *LoopRing) EventFD() int { return lr.efd }

// InFlight returns how many reads were submitted and not reaped yet.
func (lr *LoopRing) InFlight() int { return lr.inFlight }

// Read submits a read of len(b) bytes at off of the descriptor fd, which
// completes later with tag (see Reap); b must not be touched until then.
// It does not wait. It returns ErrRingFull when every place is taken,
// or the error of a submission the kernel refused; nothing is in flight
// then.
func (lr *LoopRing) Read(fd int, b []byte, off int64, tag uint64) error {
	switch {
	case lr.closed:
		return os.ErrClosed
	case len(b) == 0:
		return syscall.EINVAL
	case len(lr.free) == 0:
		return ErrRingFull
	}
	id := lr.free[len(lr.free)-1]
	if errno := lr.r.submit(fd, b, off, uint64(id)); errno != 0 {
		return os.NewSyscallError("io_uring_enter", errno)
	}
	lr.free = lr.free[:len(lr.free)-1]
	lr.bufs[id], lr.tags[id] = b, tag
	lr.inFlight++
	return nil
}

// Reap calls f for each read completed since the last call, with its tag
// and what pread(2) would have returned: the count read (fewer at the end
// of the file), or the errno of the failed read. It empties the eventfd
// first, so that a completion arriving during Reap signals it again.
func (lr *LoopRing) Reap(f func(tag uint64, n int, err error)) {
	var b [8]byte
	syscall.Read(lr.efd, b[:])
	lr.reap(f)
}

func (lr *LoopRing) reap(f func(tag uint64, n int, err error)) {
	r := &lr.r
	head := atomic.LoadUint32(r.cqHead)
	for tail := atomic.LoadUint32(r.cqTail); head != tail; head++ {
		c := r.cqes[head&r.cqMask]
		atomic.StoreUint32(r.cqHead, head+1)
		id := uint32(c.userData)
		tag := lr.tags[id]
		lr.bufs[id] = nil // the kernel is done with it
		lr.free = append(lr.free, id)
		lr.inFlight--
		if c.res < 0 {
			f(tag, 0, syscall.Errno(-c.res))
		} else {
			f(tag, int(c.res), nil)
		}
	}
}

// abandoned holds the rings Close could not wait on, with the buffers
// of their reads still in flight, for the life of the process.
var (
	abandonedMu sync.Mutex
	abandoned   []*LoopRing
)

// ringGetEvents is IORING_ENTER_GETEVENTS.
const ringGetEvents = 1 << 0

// Close waits for the reads in flight, calling f for each as Reap does
// (a buffer the kernel may still write must outlive the read), then
// releases the ring. Calling it again does nothing.
func (lr *LoopRing) Close(f func(tag uint64, n int, err error)) {
	if lr.closed {
		return
	}
	lr.closed = true
	for lr.inFlight > 0 {
		lr.reap(f)
		if lr.inFlight == 0 {
			break
		}
		_, _, errno := syscall.Syscall6(sysRingEnter, uintptr(lr.r.fd), 0, 1, ringGetEvents, 0, 0)
		switch errno {
		case 0, syscall.EINTR, syscall.EAGAIN, syscall.EBUSY:
		default:
			// The ring cannot be waited on: leave it, and the buffers it
			// may still write, to the end of the process, reachable so
			// that the collector never frees a buffer the kernel may
			// write into.
			abandonedMu.Lock()
			abandoned = append(abandoned, lr)
			abandonedMu.Unlock()
			return
		}
	}
	syscall.Close(lr.efd)
	lr.maps.close()
}
