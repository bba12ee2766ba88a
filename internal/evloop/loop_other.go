//go:build !linux

package evloop

import (
	"context"
	"errors"
	"net"
	"net/http"
)

// Supported reports whether event loops run on this system.
const Supported = false

var errUnsupported = errors.New("evloop: event loops need Linux (epoll)")

// Server would run the loops; there are none on this system.
type Server struct{}

// New fails: event loops need Linux.
func New(Handler, http.Handler, Options) (*Server, error) { return nil, errUnsupported }

// Enroll fails: there are no loops on this system.
func (s *Server) Enroll(c net.Conn) error {
	c.Close()
	return errUnsupported
}

// Unverified is 0 here: there are no loops, so no answer is sent and no
// Answer.Verified is asked.
func (s *Server) Unverified() int64 { return 0 }

// Shutdown has nothing to stop on this system.
func (s *Server) Shutdown(context.Context) error { return nil }

// loopRead is empty here: there are no loops.
type loopRead struct{}

// Read takes no read here: there are no loops.
func (a *Answer) Read(fd int, b []byte, off int64, done ReadDone) bool { return false }

// Reads takes no read here: there are no loops.
func (a *Answer) Reads(reads []FileRead, done ReadsDone) bool { return false }
