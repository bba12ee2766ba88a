package vfs

import (
	"io"
	"os"
	"strconv"
	"syscall"
)

// OpenDirect opens the file f has open once more, read-only, as a file
// description of its own whose reads bypass the page cache (O_DIRECT): a
// read goes from the device into the caller's buffer, neither looking up
// nor filling the page cache. Such reads must be aligned: the offset, the
// length and the buffer's address multiples of the file system's direct
// I/O alignment (a page is always enough; see DirectAlign). The file is
// reopened through /proc/self/fd, so it is the very file f has open even
// if its name was replaced since.
//
// Its ReadAt reads with exactly one read, through io_uring where the
// system offers it (see uring_linux.go), else pread; fewer bytes than
// asked for means the end of the file (io.EOF). Its WriteAt fails
// (read-only).
//
// It fails with ErrNoDirect when f is not a file of the operating system's
// file system (Default), and with the open's error (EINVAL on a file
// system that refuses O_DIRECT) otherwise.
func OpenDirect(f File) (File, error) {
	osf, ok := OSFile(f)
	if !ok {
		return nil, ErrNoDirect
	}
	rc, err := osf.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var oerr error
	if err := rc.Control(func(s uintptr) {
		fd, oerr = syscall.Open("/proc/self/fd/"+strconv.Itoa(int(s)), syscall.O_RDONLY|syscall.O_DIRECT|syscall.O_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if oerr != nil {
		return nil, &os.PathError{Op: "open O_DIRECT", Path: osf.Name(), Err: oerr}
	}
	return directFile{osFile{os.NewFile(uintptr(fd), osf.Name())}, fd}, nil
}

// directFile is a file opened by OpenDirect. Its ReadAt is one pread: a
// short count is the end of the file (io.EOF). The os.File's ReadAt would
// go on reading from where the short read stopped, an offset no longer
// aligned, which the kernel refuses (EINVAL).
type directFile struct {
	osFile
	fd int // the os.File's, valid until Close
}

func (f directFile) ReadAt(b []byte, off int64) (int, error) {
	if n, ok, err := RingPread(f.fd, b, off); ok {
		// Through the process's ring, blocking no thread (uring_linux.go);
		// without one, or refused by it, pread below.
		switch {
		case err != nil:
			return 0, &os.PathError{Op: "pread", Path: f.Name(), Err: err}
		case n < len(b):
			return n, io.EOF
		default:
			return n, nil
		}
	}
	for {
		n, err := syscall.Pread(f.fd, b, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, &os.PathError{Op: "pread", Path: f.Name(), Err: err}
		}
		if n < len(b) {
			return n, io.EOF
		}
		return n, nil
	}
}

// DirectFD returns the descriptor of a file OpenDirect opened, for a
// caller that reads it through io_uring itself (a LoopRing); it stays
// open until the file is closed. ok is false for any other file.
func DirectFD(f File) (fd int, ok bool) {
	d, ok := f.(directFile)
	return d.fd, ok
}
