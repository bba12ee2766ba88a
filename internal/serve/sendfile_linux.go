package serve

import (
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/evloop"
)

// RawTCP returns the descriptor access of a plain TCP connection, for
// SendFile, or nil for any other (a TLS connection must encrypt what it
// sends, so its bytes never go out with sendfile).
func RawTCP(c net.Conn) syscall.RawConn {
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

// SendFile sends n bytes of the file fd, from offset off, to the socket of
// conn with sendfile(2), so that they are never copied into the process.
// The file's own offset is never used or moved, so fd may be shared by
// concurrent senders. It waits for the socket under the connection's
// write deadline and returns how many bytes went out; a file that ends
// before off+n is io.ErrUnexpectedEOF.
func SendFile(conn syscall.RawConn, fd int, off, n int64) (int64, error) {
	return SendFileVerified(conn, fd, off, n, nil)
}

// SendFileVerified is SendFile for bytes that must be proven before they
// leave: v, when not nil, is asked before the first sendfile call and
// before the first after every wait for the socket (the file's pages may
// have changed while it waited). When it reports false nothing more is
// sent, and the error is ErrUnverified: the caller must end the
// connection, whose answer is then short of what it announced. The proof
// precedes the call it vouches for: a page that leaves the page cache and
// is read again from the disk in between (the time of one system call)
// is not caught.
func SendFileVerified(conn syscall.RawConn, fd int, off, n int64, v evloop.Verifier) (int64, error) {
	var sent int64
	var serr error
	err := conn.Write(func(sock uintptr) bool {
		if v != nil && sent < n && !v.StillVerified() {
			serr = ErrUnverified
			return true
		}
		for sent < n {
			o := off + sent
			k, err := unix.Sendfile(int(sock), fd, &o, int(min(n-sent, 1<<30)))
			if k > 0 {
				sent += int64(k)
			}
			switch {
			case err == unix.EAGAIN:
				return false // wait until the socket takes more
			case err == unix.EINTR:
			case err != nil:
				serr = err
				return true
			case k == 0:
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
