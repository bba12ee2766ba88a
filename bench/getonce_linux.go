package bench

import (
	"errors"
	"syscall"
	"time"
	"unsafe"
)

// discardMax bounds one discarding recv: the bytes a single call may drop.
const discardMax = 1 << 20

// discardSink is the address range handed to recv with MSG_TRUNC. On a
// TCP socket the kernel drops the bytes instead of copying them (tcp(7)),
// so nothing is ever written here; it only makes the range valid, and the
// connections share it.
var discardSink = make([]byte, discardMax)

// discard drops the next n bytes of the connection without copying them
// to user memory, and returns how many it dropped: recvfrom with MSG_TRUNC,
// waiting for readability in the Go netpoller (RawConn.Read) when none is
// queued.
func (w *getOnceConn) discard(n int64) (int64, error) {
	var done int64
	for done < n {
		w.want = int(min(n-done, discardMax))
		w.got, w.readErr = 0, nil
		if err := w.raw.Read(w.readFn); err != nil {
			return done, err
		}
		if w.readErr != nil {
			return done, w.readErr
		}
		if w.got == 0 {
			return done, errors.New("connection closed")
		}
		done += int64(w.got)
	}
	return done, nil
}

// recvDiscard is the RawConn.Read callback of discard: one recvfrom with
// MSG_TRUNC of up to w.want bytes. It returns false on EAGAIN, so that
// the netpoller waits for the socket and calls it again.
func (w *getOnceConn) recvDiscard(fd uintptr) bool {
	for {
		r, _, e := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&discardSink[0])), uintptr(w.want),
			syscall.MSG_TRUNC, 0, 0)
		switch e {
		case 0:
			w.got = int(r)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			w.readErr = e
			return true
		}
	}
}

// processCPU is the user and system time this process has used
// (getrusage RUSAGE_SELF).
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
