package evloop

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// System calls the loops make without telling Go's scheduler.
//
// Most of a loop's calls on its sockets never wait: the sockets are
// non-blocking and epoll_wait is asked with a timeout of 0. Made the usual
// way (Syscall), each call marks its goroutine's P as in a system call; a
// call longer than the scheduler monitor's tick (20 µs: a writev of a few
// hundred KB on loopback) has that P handed to another thread, and the
// loop then waits for a P of its own again, a thread switch per large
// answer. The loops make these calls with RawSyscall instead: the loop
// keeps its P throughout, as it would while computing.
//
// A call that may wait for the disk must not be made so: while it waits,
// its P cannot be stopped, and a garbage collection waits for it with
// every goroutine of the process. A sendfile, or a writev of bytes that
// lie in a file's mapping (Answer.BodyInFile), is made raw in the loop's
// turn in which its Handler found the file's pages in the page cache.
// Made in a later turn (resumed after a full socket, queued behind other
// answers, or answered off the loop or by a ReadDone), the pages may have
// left the page cache since: the answer's Verifier (Answer.Verified), if
// it has one, is asked first, at most once a turn. When it reports the
// bytes still verified (their pages found present), the call is made raw,
// as in the Handler's turn; when it does not, none of those bytes is sent
// and the connection ends (Server.Unverified counts it). An answer
// without a Verifier has such a call go through the scheduler, as do the
// netpoller's waits and io_uring's.

// sendfile is sendfile(2), advancing *off by the count sent: without the
// scheduler when fresh (the Handler found the file's pages in the page
// cache in this turn of the loop, or its Verifier found them still
// verified in it), through it otherwise (a later send without a
// Verifier, when the pages may have left the page cache).
func sendfile(out, in int, off *int64, n int, fresh bool) (int, error) {
	if !fresh || unsafe.Sizeof(uintptr(0)) != 8 {
		// On 32-bit systems SYS_SENDFILE takes a 32-bit offset:
		// unix.Sendfile calls sendfile64 there.
		return unix.Sendfile(out, in, off, n)
	}
	r, _, e := unix.RawSyscall6(unix.SYS_SENDFILE, uintptr(out), uintptr(in), uintptr(unsafe.Pointer(off)), uintptr(n), 0, 0)
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// rawCall and waitingCall make a writev or sendmsg: without the
// scheduler, or through it for bytes that may fault in from the disk;
// variables so that tests can see which a write took.
var (
	rawCall     = unix.RawSyscall
	waitingCall = unix.Syscall
)

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

// rawEpollPoll is epoll_wait(2) with a timeout of 0: the events ready now.
func rawEpollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
