//go:build !(linux && (amd64 || arm64))

package vfs

// RingPread reads through io_uring on Linux on amd64 and arm64 only (see
// uring_linux.go); elsewhere ok is false and the caller reads with pread.
func RingPread(fd int, b []byte, off int64) (n int, ok bool, err error) { return 0, false, nil }

// RingReads returns how many reads went through io_uring: none here.
func RingReads() int64 { return 0 }

// RingStatus reports that reads do not go through io_uring here, and why.
func RingStatus() (on bool, why string) {
	return false, "io_uring is used on Linux on amd64 and arm64 only"
}
