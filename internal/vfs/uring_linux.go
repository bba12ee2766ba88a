//go:build linux && (amd64 || arm64)

package vfs

import (
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Reads through io_uring.
//
// A pread that waits for the device (any read of a file opened with
// O_DIRECT; a buffered read of pages not in the page cache) blocks its
// thread for the whole read, a hundred microseconds and more. The Go
// runtime then takes the thread's P away (sysmon, after 20 µs), wakes
// another thread to run goroutines, and hands a P back after: on a store
// reading cold images, 9-20% of its CPU (bench/RESULTS.md). Through
// io_uring a read is submitted with one short io_uring_enter that does not
// wait, and its completion wakes the reading goroutine through the
// netpoller: the ring signals an eventfd, which one goroutine reads as it
// reads a socket, and hands each completion to its reader. No thread
// blocks. Files opened by OpenDirect read so; RingPread offers it to
// other readers of descriptors (the volumes' buffered reads of cold
// needles).
//
// The ring's layout (io_uring(7)): the kernel and this process share the
// submission ring (head, tail, mask and an array of indexes into the
// submission entries), the entries themselves (64 bytes each, the fields
// of ringSQE) and the completion ring (head, tail, mask and the 16-byte
// entries of ringCQE), each mapped from the ring's descriptor. This
// process writes submission entries and moves the submission tail, under
// a lock, and submits each entry with its own io_uring_enter under that
// lock, so an entry the kernel refused is taken back before anyone adds
// another; the kernel moves the submission head and the completion tail;
// the reaping goroutine moves the completion head. A request's id (its
// user_data) is its reader's place in done; ids are taken from a pool as
// large as the smaller ring, so the completion ring cannot overflow.
//
// Where io_uring cannot be had (an old kernel: ENOSYS; kernel.io_uring_disabled
// or a seccomp filter: EPERM; a kernel without a single mapping of both
// rings, before 5.4; any other failure to set the ring up), or refuses a
// read (EINVAL, EOPNOTSUPP), reads are preads, as before.

// ringEntries is the size of the submission ring, and the bound on reads
// in flight through it at once (a further reader waits for a place).
const ringEntries = 256

// Constants of the io_uring ABI (linux/io_uring.h), and the numbers of
// its system calls (the same on amd64 and arm64; the package keeps to the
// standard library, whose syscall package predates them).
const (
	sysRingSetup      = 425
	sysRingEnter      = 426
	sysRingRegister   = 427
	ringOffSQRing     = 0
	ringOffCQRing     = 0x8000000
	ringOffSQEs       = 0x10000000
	ringOpRead        = 22
	ringFeatSingleMap = 1 << 0
	ringRegEventfd    = 4
)

// ringParams is struct io_uring_params.
type ringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  struct {
		head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
		userAddr                                                        uint64
	}
	cqOff struct {
		head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
		userAddr                                                        uint64
	}
}

// ringSQE is struct io_uring_sqe (64 bytes), as a read uses it.
type ringSQE struct {
	opcode   uint8
	flags    uint8
	ioprio   uint16
	fd       int32
	off      uint64
	addr     uint64
	len      uint32
	rwFlags  uint32
	userData uint64
	_        [3]uint64
}

// ringCQE is struct io_uring_cqe (16 bytes).
type ringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// ring is an io_uring instance shared by every direct file of the
// process. It is never closed: it lives as long as the process.
type ring struct {
	fd     int
	sqHead *uint32
	sqTail *uint32
	sqMask uint32
	sqArr  []uint32
	sqes   []ringSQE
	cqHead *uint32
	cqTail *uint32
	cqMask uint32
	cqes   []ringCQE

	mu        sync.Mutex // orders writers of submission entries
	efd       *os.File   // the eventfd the kernel signals completions on
	ids       chan uint32
	done      []chan int32 // by request id: the result of its read
	submitted atomic.Int64 // reads submitted (RingReads)
}

var (
	theRing     *ring
	theRingErr  error
	theRingOnce sync.Once
	// newRing sets the process's ring up; a variable so that tests can
	// make the system refuse io_uring.
	newRing = setupRing
)

// sharedRing returns the process's ring, set up on first use, or nil when
// io_uring cannot be had (the reason is kept for RingStatus).
func sharedRing() *ring {
	theRingOnce.Do(func() { theRing, theRingErr = newRing() })
	return theRing
}

// RingStatus reports whether reads of files opened by OpenDirect go
// through io_uring, and if not, why. It sets the ring up if it was not.
func RingStatus() (on bool, why string) {
	if sharedRing() != nil {
		return true, ""
	}
	return false, theRingErr.Error()
}

// ringMaps is a ring's descriptor and its two mappings, as openRing
// sets them up.
type ringMaps struct {
	fd     int
	rb, sb []byte // the rings; the submission entries
	n      int    // places: the smaller of the two rings
}

// close unmaps the rings and closes the descriptor.
func (m *ringMaps) close() {
	syscall.Munmap(m.sb)
	syscall.Munmap(m.rb)
	syscall.Close(m.fd)
}

// openRing sets up an io_uring of entries submission entries, maps it
// into r, and registers a new non-blocking eventfd that the kernel signals
// on each completion.
func openRing(r *ring, entries uint32) (ringMaps, int, error) {
	var p ringParams
	fd, _, errno := syscall.Syscall(sysRingSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return ringMaps{}, -1, os.NewSyscallError("io_uring_setup", errno)
	}
	m := ringMaps{fd: int(fd)}
	fail := func(op string, err error) (ringMaps, int, error) {
		syscall.Close(m.fd)
		return ringMaps{}, -1, os.NewSyscallError(op, err)
	}
	if p.features&ringFeatSingleMap == 0 {
		return fail("io_uring_setup", syscall.ENOTSUP) // kernels before 5.4: pread
	}
	sqLen := int(p.sqOff.array) + int(p.sqEntries)*4
	cqLen := int(p.cqOff.cqes) + int(p.cqEntries)*int(unsafe.Sizeof(ringCQE{}))
	ringLen := max(sqLen, cqLen)
	rb, err := syscall.Mmap(m.fd, ringOffSQRing, ringLen, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE)
	if err != nil {
		return fail("mmap", err)
	}
	sb, err := syscall.Mmap(m.fd, ringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(ringSQE{})), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE)
	if err != nil {
		syscall.Munmap(rb)
		return fail("mmap", err)
	}
	m.rb, m.sb, m.n = rb, sb, int(min(p.sqEntries, p.cqEntries))
	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&rb[off])) }
	r.fd = m.fd
	r.sqHead, r.sqTail, r.sqMask = u32(p.sqOff.head), u32(p.sqOff.tail), *u32(p.sqOff.ringMask)
	r.sqArr = unsafe.Slice(u32(p.sqOff.array), p.sqEntries)
	r.sqes = unsafe.Slice((*ringSQE)(unsafe.Pointer(&sb[0])), p.sqEntries)
	r.cqHead, r.cqTail, r.cqMask = u32(p.cqOff.head), u32(p.cqOff.tail), *u32(p.cqOff.ringMask)
	r.cqes = unsafe.Slice((*ringCQE)(unsafe.Pointer(&rb[p.cqOff.cqes])), p.cqEntries)

	efd, err := eventfd()
	if err != nil {
		m.close()
		return ringMaps{}, -1, os.NewSyscallError("eventfd", err)
	}
	e := int32(efd)
	if _, _, errno := syscall.Syscall6(sysRingRegister, uintptr(m.fd), ringRegEventfd, uintptr(unsafe.Pointer(&e)), 1, 0, 0); errno != 0 {
		syscall.Close(efd)
		m.close()
		return ringMaps{}, -1, os.NewSyscallError("io_uring_register", errno)
	}
	return m, efd, nil
}

func setupRing() (*ring, error) {
	r := &ring{}
	m, efd, err := openRing(r, ringEntries)
	if err != nil {
		return nil, err
	}
	// A non-blocking descriptor given to os.NewFile is read through the
	// netpoller: a read parks the goroutine, not the thread.
	r.efd = os.NewFile(uintptr(efd), "io_uring eventfd")
	n := m.n
	r.ids = make(chan uint32, n)
	r.done = make([]chan int32, n)
	for i := range n {
		r.ids <- uint32(i)
		r.done[i] = make(chan int32, 1)
	}
	go r.reap()
	return r, nil
}

// eventfd returns a new eventfd, non-blocking (EFD_NONBLOCK is
// O_NONBLOCK, EFD_CLOEXEC O_CLOEXEC).
func eventfd() (int, error) {
	fd, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// reap hands each completion to its reader, woken by the eventfd.
func (r *ring) reap() {
	var b [8]byte
	for {
		if _, err := r.efd.Read(b[:]); err != nil {
			// Never closed, so not expected; should the eventfd fail,
			// completions are still reaped, by polling the ring.
			time.Sleep(time.Millisecond)
		}
		head := atomic.LoadUint32(r.cqHead)
		for tail := atomic.LoadUint32(r.cqTail); head != tail; head++ {
			c := r.cqes[head&r.cqMask]
			r.done[c.userData] <- c.res
		}
		atomic.StoreUint32(r.cqHead, head)
	}
}

// submit submits a read of len(b) bytes at off of fd, user_data id,
// with its own io_uring_enter, which does not wait for it; 0, or the errno
// of a submission the kernel refused (the entry is then taken back). The
// caller orders the ring's submitters (r.mu, or a ring of one owner).
func (r *ring) submit(fd int, b []byte, off int64, id uint64) syscall.Errno {
	tail := atomic.LoadUint32(r.sqTail)
	i := tail & r.sqMask
	r.sqes[i] = ringSQE{opcode: ringOpRead, fd: int32(fd), off: uint64(off), addr: uint64(uintptr(unsafe.Pointer(&b[0]))), len: uint32(len(b)), userData: id}
	r.sqArr[i] = i
	atomic.StoreUint32(r.sqTail, tail+1)
	for {
		_, _, errno := syscall.Syscall6(sysRingEnter, uintptr(r.fd), 1, 0, 0, 0, 0)
		if atomic.LoadUint32(r.sqHead) != tail {
			return 0 // consumed: its completion comes
		}
		if errno == syscall.EINTR || errno == 0 {
			continue
		}
		// Refused (EAGAIN: no memory for the request now; anything else:
		// the ring is broken): the entry was not consumed, take it back.
		atomic.StoreUint32(r.sqTail, tail)
		return errno
	}
}

// pread reads len(b) bytes at off of fd through the ring, as pread(2)
// does: the count read, or the errno of a failed read (or of a submission
// the kernel refused).
func (r *ring) pread(fd int, b []byte, off int64) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	id := <-r.ids
	r.mu.Lock()
	errno := r.submit(fd, b, off, uint64(id))
	r.mu.Unlock()
	if errno != 0 {
		r.ids <- id
		return 0, errno
	}
	r.submitted.Add(1)
	res := <-r.done[id]
	runtime.KeepAlive(b)
	r.ids <- id
	if res < 0 {
		return 0, syscall.Errno(-res)
	}
	return int(res), nil
}

// RingPread reads len(b) bytes at off of the descriptor fd as pread(2)
// does (the count read; fewer at the end of the file), through the
// process's ring, so that a read waiting for the device blocks no thread;
// ok is false when the process has no ring or the ring refused the read
// (err is then nil, and the caller reads with pread).
func RingPread(fd int, b []byte, off int64) (n int, ok bool, err error) {
	r := sharedRing()
	if r == nil {
		return 0, false, nil
	}
	n, err = r.pread(fd, b, off)
	if err == syscall.EINVAL || err == syscall.EOPNOTSUPP || err == syscall.EAGAIN {
		return 0, false, nil
	}
	return n, true, err
}

// RingReads returns how many reads the process has submitted through its
// ring.
func RingReads() int64 {
	if r := sharedRing(); r != nil {
		return r.submitted.Load()
	}
	return 0
}
