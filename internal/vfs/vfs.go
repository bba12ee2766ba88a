// Package vfs is the file-system seam of the storage engine: every open, read,
// write, sync, rename, remove and directory sync that store/volume performs goes
// through the FS and File interfaces defined here, so tests can substitute an
// in-memory file system that simulates power cuts (MemFS) or wrap any FS to
// inject errors and count operations (package vfs/errorfs).
//
// Semantics are those of POSIX files on Linux. In particular a write is not
// durable until File.Sync returns nil, and the creation, rename or removal of
// a file is not durable until the parent directory has been synced.
package vfs

import (
	"errors"
	"io"
	"os"
	"path/filepath"
)

// File is an open file. ReadAt and WriteAt are positional (pread and pwrite)
// and do not move any file offset; they may be called concurrently with each
// other. The other methods must not be called concurrently with Close.
type File interface {
	io.ReaderAt
	io.WriterAt
	io.Closer

	// Sync makes every byte written so far durable (fdatasync on Linux).
	// After Sync fails, nothing written since the previous successful
	// Sync can be assumed durable, and a later Sync returning nil does not
	// change that.
	Sync() error

	// Truncate changes the size of the file. Like a write, the new size is
	// durable only after a successful Sync.
	Truncate(size int64) error

	// Size returns the current size of the file in bytes.
	Size() (int64, error)
}

// FS is a file system. Paths are slash- or OS-separated as the
// implementation expects; the engine always builds them with filepath.Join.
type FS interface {
	// Create creates the named file for reading and writing, truncating it
	// if it exists.
	Create(name string) (File, error)

	// OpenReadWrite opens the named file for reading and writing, creating
	// it (empty) if it does not exist.
	OpenReadWrite(name string) (File, error)

	// Open opens the named file read-only. Writing to it returns an error.
	Open(name string) (File, error)

	// Remove removes the named file or empty directory.
	Remove(name string) error

	// Rename atomically renames oldname to newname, replacing newname if it
	// exists. The rename is durable only after SyncDir of the parent.
	Rename(oldname, newname string) error

	// MkdirAll creates a directory and any missing parents.
	MkdirAll(dir string, perm os.FileMode) error

	// SyncDir makes the creations, renames and removals of entries in dir
	// durable.
	SyncDir(dir string) error

	// List returns the names (not paths) of the entries in dir, sorted.
	List(dir string) ([]string, error)

	// Stat returns the FileInfo of the named file.
	Stat(name string) (os.FileInfo, error)

	// Lock takes an exclusive lock named by the file name (created if
	// missing), held until the returned Closer is closed or the process
	// ends. It fails with ErrLocked, at once, when the lock is held,
	// by this process or another.
	Lock(name string) (io.Closer, error)
}

// ErrLocked is returned by Lock when the lock is already held.
var ErrLocked = errors.New("vfs: locked by another user")

// WriteFileAtomic writes a small file as a whole or not at all: it writes
// path+".tmp", syncs it, renames it over path and syncs the directory.
// Readers see the old contents or the new, never a mix, before and after
// a crash.
func WriteFileAtomic(fs FS, path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := fs.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fs.Rename(tmp, path); err != nil {
		return err
	}
	return fs.SyncDir(filepath.Dir(path))
}

// ErrNoDirect is returned by OpenDirect for a file it cannot open for
// direct reads: one of a file system other than the operating system's
// (MemFS, a wrapping FS), or any file on a system without O_DIRECT.
var ErrNoDirect = errors.New("vfs: direct reads not supported for this file")

// DirectAlign is the alignment OpenDirect's reads keep, to which the
// engine rounds them out: their offset, length and buffer address are
// multiples of it. A page is a multiple of
// the logical block size (512 or 4096 bytes) of every block device and
// file system that takes O_DIRECT, and rounding a read out to 4 KiB reads
// no page the buffered read of the same range would not.
const DirectAlign = 4096
