package evloop

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// System calls the loops make without telling Go's scheduler.
//
// A loop's calls on its sockets never wait: the sockets are non-blocking,
// epoll_wait is asked with a timeout of 0, and a sendfile reads pages the
// store has just found in the page cache. Made the usual way (Syscall),
// each call marks its goroutine's P as in a system call; a call longer
// than the scheduler monitor's tick (20 µs: a sendfile or writev of a few
// hundred KB on loopback) has that P handed to another thread, and the
// loop then waits for a P of its own again, a thread switch per large
// answer. The loops make these calls with RawSyscall instead: the loop
// keeps its P throughout, as it would while computing. Only the calls
// that may wait (the netpoller's, io_uring's wait at close) go through
// the scheduler.

// rawRead is read(2).
func rawRead(fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(p), uintptr(len(b)))
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// rawSendfile is sendfile(2), advancing *off by the count sent.
func rawSendfile(out, in int, off *int64, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDFILE, uintptr(out), uintptr(in), uintptr(unsafe.Pointer(off)), uintptr(n), 0, 0)
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// rawEpollPoll is epoll_wait(2) with a timeout of 0: the events ready now.
func rawEpollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
