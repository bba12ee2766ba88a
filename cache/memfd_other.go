//go:build !linux

package cache

import (
	"errors"
	"io"
	"net"
)

// newArena fails outside Linux: there is no memfd_create, and every image
// stays in Go memory.
func newArena(int64, int) (*arena, error) {
	return nil, errors.New("memfd_create is Linux only")
}

// largeHit is the sendfile answer of Linux (see memfd_linux.go); without
// an arena it is never built.
type largeHit struct{ s *slot }

func newLargeHit(net.Conn, *slot) *largeHit { return nil }

func (h *largeHit) Read([]byte) (int, error)         { return 0, io.ErrNoProgress }
func (h *largeHit) SupportsBodyWriteTo() bool        { return false }
func (h *largeHit) WriteTo(io.Writer) (int64, error) { return 0, io.ErrNoProgress }
func (h *largeHit) Close() error                     { return nil }
