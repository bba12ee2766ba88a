//go:build unix

package volume

import "syscall"

// mapAnon maps n bytes of private anonymous memory, zeroed; false when the
// mapping fails (the caller then allocates on the heap).
func mapAnon(n int) ([]byte, bool) {
	if n <= 0 {
		return nil, false
	}
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, false
	}
	return b, true
}

// unmapAnon unmaps b if mapAnon mapped it, and reports whether it did.
func unmapAnon(b []byte) bool {
	return syscall.Munmap(b) == nil
}
