//go:build !(linux && (amd64 || arm64))

package vfs

import "errors"

// RingPread reads through io_uring on Linux on amd64 and arm64 only (see
// uring_linux.go); elsewhere ok is false and the caller reads with pread.
func RingPread(fd int, b []byte, off int64) (n int, ok bool, err error) { return 0, false, nil }

// RingReads returns how many reads went through io_uring: none here.
func RingReads() int64 { return 0 }

// RingStatus reports that reads do not go through io_uring here, and why.
func RingStatus() (on bool, why string) {
	return false, "io_uring is used on Linux on amd64 and arm64 only"
}

// ErrRingFull is returned by LoopRing.Read when the ring is full.
var ErrRingFull = errors.New("vfs: io_uring full")

// LoopRing is an io_uring of one owner on Linux (see loopring_linux.go);
// none can be set up here.
type LoopRing struct{}

// NewLoopRing returns an error here: no io_uring.
func NewLoopRing(int) (*LoopRing, error) {
	return nil, errors.New("io_uring is used on Linux on amd64 and arm64 only")
}

// EventFD is never called: no LoopRing exists here.
func (*LoopRing) EventFD() int { return -1 }

// InFlight is never called: no LoopRing exists here.
func (*LoopRing) InFlight() int { return 0 }

// Read is never called: no LoopRing exists here.
func (*LoopRing) Read(int, []byte, int64, uint64) error { return ErrRingFull }

// Reap is never called: no LoopRing exists here.
func (*LoopRing) Reap(func(uint64, int, error)) {}

// Close is never called: no LoopRing exists here.
func (*LoopRing) Close(func(uint64, int, error)) {}
