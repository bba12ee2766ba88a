package serve

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// moreListener hands out its plain TCP connections as moreConns, so that
// a fast handler can tell the next write of an answer that more follows
// (MoreFollows). Any other connection (a TLS one above all, which
// tls.NewListener wraps around this listener, never inside it) is handed
// out as it is.
type moreListener struct{ net.Listener }

func (l moreListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c, nil
	}
	mc := &moreConn{TCPConn: tc, rc: rc}
	mc.sendMore = mc.sendMoreFn // bound once, so that a write allocates nothing
	return mc, nil
}

// moreConn is a plain TCP connection whose next Write, once MoreFollows
// marked it, is sent with MSG_MORE: the kernel holds a partial segment
// until the next send (a sendfile of the body) fills it, so that an
// answer's headers and the start of its body leave in the same segments
// instead of the headers in a packet of their own, without the two
// setsockopt calls of a TCP_CORK around the answer.
type moreConn struct {
	*net.TCPConn
	rc   syscall.RawConn
	more bool

	// The write in progress under rc.Write, and its result.
	p        []byte
	sent     int
	err      error
	sendMore func(uintptr) bool
}

// Write writes p, with MSG_MORE when MoreFollows marked the connection
// (the mark holds for this one write).
func (c *moreConn) Write(p []byte) (int, error) {
	if !c.more {
		return c.TCPConn.Write(p)
	}
	c.more = false
	c.p, c.sent, c.err = p, 0, nil
	err := c.rc.Write(c.sendMore)
	n := c.sent
	if err == nil {
		err = c.err
	}
	c.p, c.err = nil, nil
	if err != nil {
		err = &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, err
}

// sendMoreFn sends c.p from c.sent with MSG_MORE, as far as the socket
// takes it; rc.Write calls it again once the socket has room.
func (c *moreConn) sendMoreFn(fd uintptr) bool {
	for c.sent < len(c.p) {
		p := c.p[c.sent:]
		n, _, errno := unix.Syscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), unix.MSG_MORE|unix.MSG_NOSIGNAL, 0, 0)
		switch errno {
		case 0:
			c.sent += int(n)
		case unix.EAGAIN:
			return false // wait until the socket takes more
		case unix.EINTR:
		default:
			c.err = errno
			return true
		}
	}
	return true
}

// MoreFollows marks c, a connection of a fasthttp server of
// Options.MoreWrites, so that its next Write is sent with MSG_MORE: the
// caller must send more right after it (the body of the same answer),
// which pushes the held bytes out. It reports whether c is such a
// connection; any other (TLS, or a server without MoreWrites) is left as
// it is, and its writes go out as they are.
func MoreFollows(c net.Conn) bool {
	mc, ok := c.(*moreConn)
	if ok {
		mc.more = true
	}
	return ok
}

// moreListen returns ln handing out moreConns.
func moreListen(ln net.Listener) net.Listener { return moreListener{ln} }
