//go:build !linux

package serve

import (
	"errors"
	"net"
	"syscall"

	"github.com/haybale/haybale/internal/evloop"
)

// RawTCP returns nil outside Linux: answers are written from memory, never
// sent with sendfile.
func RawTCP(net.Conn) syscall.RawConn { return nil }

// SendFile is Linux only; RawTCP returning nil keeps callers from it.
func SendFile(syscall.RawConn, int, int64, int64) (int64, error) {
	return 0, errors.New("serve: sendfile is Linux only")
}

// SendFileVerified is Linux only, as SendFile.
func SendFileVerified(syscall.RawConn, int, int64, int64, evloop.Verifier) (int64, error) {
	return 0, errors.New("serve: sendfile is Linux only")
}
