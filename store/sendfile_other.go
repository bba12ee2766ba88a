//go:build !linux

package store

import (
	"io"
	"net"
	"syscall"
)

// sendBody sends a large image with sendfile on Linux (see
// sendfile_linux.go); elsewhere rawConn returns nil, so no sendBody is
// ever used and answers are written from the volume file's bytes.
type sendBody struct {
	conn syscall.RawConn
	fd   int
	off  int64
	n    int64
}

func (s *sendBody) Read([]byte) (int, error)         { return 0, io.ErrNoProgress }
func (s *sendBody) SupportsBodyWriteTo() bool        { return false }
func (s *sendBody) WriteTo(io.Writer) (int64, error) { return 0, io.ErrNoProgress }

func rawConn(net.Conn) syscall.RawConn { return nil }
