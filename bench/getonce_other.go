//go:build !linux

package bench

import (
	"errors"
	"io"
	"time"
)

// discard reads and drops the next n bytes of the connection, through the
// connection's header buffer, free once the header block is parsed and
// reused for every answer (MSG_TRUNC, which drops them in the kernel, is
// Linux's).
func (w *getOnceConn) discard(n int64) (int64, error) {
	var done int64
	for done < n {
		k, err := w.conn.Read(w.hdr[:min(n-done, int64(len(w.hdr)))])
		done += int64(k)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return done, errors.New("connection closed")
			}
			return done, err
		}
	}
	return done, nil
}

// recvDiscard is not used off Linux, where discard reads.
func (w *getOnceConn) recvDiscard(uintptr) bool { return true }

// processCPU does not tell the process's CPU time off Linux.
func processCPU() (time.Duration, bool) { return 0, false }
