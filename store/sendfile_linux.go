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
//
// The socket is corked (TCP_CORK) before the headers are flushed and
// uncorked once the body is sent, as nginx does with tcp_nopush: the
// headers then leave in the first packet of the body instead of a packet
// of their own, and on loopback the sender pays for the receiver's work on
// every packet. A corked socket holds a partial packet for up to 200 ms,
// so the cork is taken off on every path: at the end of WriteTo, and when
// the request closes its read buffer (the headers failed to go, or the
// body was never written).
type sendBody struct {
	conn   syscall.RawConn
	fd     int   // the volume file, held open by the request's volume.Ref
	off    int64 // where the needle's data starts in it
	n      int64 // and its length
	corked bool  // TCP_CORK is set on conn
}

// cork sets TCP_CORK on the connection, before the headers are flushed. A
// socket that refuses it is sent to uncorked.
func (s *sendBody) cork() {
	s.corked = setCork(s.conn, true) == nil
}

// uncork takes TCP_CORK off the connection if cork set it, which sends
// what it held at once.
func (s *sendBody) uncork() {
	if s.corked {
		s.corked = false
		setCork(s.conn, false) // a closed connection has nothing to send
	}
}

// setCork sets or clears TCP_CORK on c.
func setCork(c syscall.RawConn, on bool) error {
	v := 0
	if on {
		v = 1
	}
	var serr error
	if err := c.Control(func(sock uintptr) {
		serr = unix.SetsockoptInt(int(sock), unix.IPPROTO_TCP, unix.TCP_CORK, v)
	}); err != nil {
		return err
	}
	return serr
}

// Read is never called: fasthttp uses WriteTo (SupportsBodyWriteTo).
func (s *sendBody) Read([]byte) (int, error) { return 0, io.ErrNoProgress }

// SupportsBodyWriteTo tells fasthttp to send the body with WriteTo.
func (s *sendBody) SupportsBodyWriteTo() bool { return true }

// WriteTo sends the body with sendfile, from its offset (the volume
// file's offset is never used or moved), then uncorks the socket; w,
// fasthttp's buffered writer, was flushed before and is not used.
func (s *sendBody) WriteTo(io.Writer) (int64, error) {
	defer s.uncork()
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
