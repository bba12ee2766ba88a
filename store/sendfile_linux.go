package store

import (
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// sendBody is the body of a large image answer on the fast path: the
// verified needle's bytes, sent from the volume file to the socket with
// sendfile(2), so that they are never copied into the process. fasthttp
// flushes the headers (Response.ImmediateHeaderFlush) before it calls
// WriteTo, which then writes to the connection's descriptor directly,
// under the connection's write deadline.
type sendBody struct {
	conn syscall.RawConn
	fd   int   // the volume file, held open by the request's volume.Ref
	off  int64 // where the needle's data starts in it
	n    int64 // and its length
}

// Read is never called: fasthttp uses WriteTo (SupportsBodyWriteTo).
func (s *sendBody) Read([]byte) (int, error) { return 0, io.ErrNoProgress }

// SupportsBodyWriteTo tells fasthttp to send the body with WriteTo.
func (s *sendBody) SupportsBodyWriteTo() bool { return true }

// WriteTo sends the body with sendfile, from its offset (the volume
// file's offset is never used or moved); w, fasthttp's buffered writer,
// was flushed before and is not used.
func (s *sendBody) WriteTo(io.Writer) (int64, error) {
	var sent int64
	var serr error
	err := s.conn.Write(func(sock uintptr) bool {
		for sent < s.n {
			off := s.off + sent
			n, err := unix.Sendfile(int(sock), s.fd, &off, int(min(s.n-sent, 1<<30)))
			if n > 0 {
				sent += int64(n)
			}
			switch {
			case err == unix.EAGAIN:
				return false // wait until the socket takes more
			case err == unix.EINTR:
			case err != nil:
				serr = err
				return true
			case n == 0:
				serr = io.ErrUnexpectedEOF // the file ended early
				return true
			}
		}
		return true
	})
	if err == nil {
		err = serr
	}
	return sent, err
}

// rawConn returns the descriptor access of a plain TCP connection, or nil
// for any other (a TLS connection must encrypt what it sends).
func rawConn(c net.Conn) syscall.RawConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
