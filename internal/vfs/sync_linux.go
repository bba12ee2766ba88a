package vfs

import (
	"os"
	"syscall"
)

// datasync flushes the file's data and the metadata needed to read it back
// (its size) with fdatasync, which is all a volume needs. The descriptor is
// used through SyscallConn so that it cannot be closed and reused during the
// call, and a closed file reports os.ErrClosed like the other methods.
func datasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
	}
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	})
	if cerr != nil {
		// The only failure of Control is a closed (or closing) file.
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: os.ErrClosed}
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}
