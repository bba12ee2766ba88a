//go:build !linux

package vfs

// OpenDirect reads bypassing the page cache on Linux only; elsewhere it
// fails with ErrNoDirect.
func OpenDirect(File) (File, error) { return nil, ErrNoDirect }

// DirectFD reports that no file is direct here.
func DirectFD(File) (fd int, ok bool) { return -1, false }
