// Package errorfs wraps a vfs.FS to inject errors into, and count, its
// operations, so tests can prove how the storage engine behaves under short
// writes, full disks, I/O errors and failed syncs, and how many I/Os an
// operation costs.
//
// Wrap describes every operation as an Op and asks an Injector whether it
// should fail. Injectors compose:
//
//	// Fail the third write to any ".dat" file with ENOSPC.
//	inj := errorfs.OnPath(".dat", errorfs.After(2, errorfs.OnKind(errorfs.OpWrite, syscall.ENOSPC)))
//
//	// Count everything; fail syncs only while the toggle is on.
//	var c errorfs.Counter
//	t := errorfs.NewToggle(errorfs.OnKind(errorfs.OpSync, syscall.EIO))
//	fs := errorfs.Wrap(vfs.NewMem(), errorfs.Chain(&c, t))
//
// An injected error that is not already an *os.PathError, *os.LinkError or
// *ShortWriteError is returned wrapped in an *os.PathError naming the
// operation and the path, as the OS would report it, so errors.Is(err,
// syscall.ENOSPC) holds. A *ShortWriteError injected into a write makes the
// write reach the file only partly (see ShortWriteError).
//
// An injected error replaces the operation: the wrapped FS is not called. An
// injected failure of Close leaves the underlying file open; an injected
// failure of Sync leaves the written bytes undurable, but a later successful
// Sync makes them durable (it does not model the loss of dirty pages after a
// failed fsync).
package errorfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"

	"github.com/haybale/haybale/internal/vfs"
)

// OpKind is the kind of a file-system operation.
type OpKind int

// The kinds of operation. The first group are FS methods, the second File
// methods.
const (
	OpCreate   OpKind = iota // FS.Create
	OpOpen                   // FS.Open and FS.OpenReadWrite
	OpRemove                 // FS.Remove
	OpRename                 // FS.Rename
	OpMkdir                  // FS.MkdirAll
	OpSyncDir                // FS.SyncDir
	OpList                   // FS.List
	OpStat                   // FS.Stat
	OpRead                   // File.ReadAt
	OpWrite                  // File.WriteAt
	OpSync                   // File.Sync
	OpTruncate               // File.Truncate
	OpSize                   // File.Size
	OpClose                  // File.Close
	OpLock                   // FS.Lock

	numOpKinds = iota
)

var opKindNames = [numOpKinds]string{
	OpCreate:   "create",
	OpOpen:     "open",
	OpRemove:   "remove",
	OpRename:   "rename",
	OpMkdir:    "mkdir",
	OpSyncDir:  "syncdir",
	OpList:     "list",
	OpStat:     "stat",
	OpRead:     "read",
	OpWrite:    "write",
	OpSync:     "sync",
	OpTruncate: "truncate",
	OpSize:     "size",
	OpClose:    "close",
	OpLock:     "lock",
}

// String returns the lower-case name of the kind, such as "write".
func (k OpKind) String() string {
	if k >= 0 && int(k) < numOpKinds {
		return opKindNames[k]
	}
	return fmt.Sprintf("OpKind(%d)", int(k))
}

// Op describes one operation about to be performed.
type Op struct {
	Kind OpKind
	// Path is the path the operation applies to: the FS argument, or the
	// name a File was opened with. For OpRename it is the old name.
	Path string
	// NewPath is the new name of an OpRename, empty otherwise.
	NewPath string
	// Off is the offset of an OpRead or OpWrite and the new size of an
	// OpTruncate.
	Off int64
	// Len is the length of the buffer of an OpRead or OpWrite.
	Len int
}

// String formats the op for test failure messages.
func (op Op) String() string {
	switch op.Kind {
	case OpRename:
		return fmt.Sprintf("rename %s %s", op.Path, op.NewPath)
	case OpRead, OpWrite:
		return fmt.Sprintf("%s %s off=%d len=%d", op.Kind, op.Path, op.Off, op.Len)
	case OpTruncate:
		return fmt.Sprintf("truncate %s size=%d", op.Path, op.Off)
	}
	return fmt.Sprintf("%s %s", op.Kind, op.Path)
}

// Injector decides whether an operation fails.
type Injector interface {
	// MaybeError returns the error the operation must fail with, or nil to
	// let it proceed. It is called concurrently when the FS is used
	// concurrently.
	MaybeError(op Op) error
}

// InjectorFunc adapts a function to the Injector interface. It is as safe
// for concurrent use as the function is.
type InjectorFunc func(op Op) error

// MaybeError implements Injector by calling f.
func (f InjectorFunc) MaybeError(op Op) error { return f(op) }

// ErrInjected is a ready error for tests that only need some failure.
var ErrInjected = errors.New("errorfs: injected error")

// ShortWriteError, returned by an Injector for an OpWrite, makes the write
// put only the first N bytes of the buffer (all of it if N exceeds its
// length) into the underlying file and then fail, as a write interrupted by
// a full disk or a crash does. The write returns n = N and Err, or
// io.ErrShortWrite when Err is nil, wrapped in an *os.PathError. For other
// kinds of operation it is returned as an ordinary error.
type ShortWriteError struct {
	N   int
	Err error
}

// Error implements error.
func (e *ShortWriteError) Error() string {
	return fmt.Sprintf("short write of %d bytes: %v", e.N, e.cause())
}

// Unwrap returns the error the short write reports.
func (e *ShortWriteError) Unwrap() error { return e.cause() }

func (e *ShortWriteError) cause() error {
	if e.Err == nil {
		return io.ErrShortWrite
	}
	return e.Err
}

// ShortWrite returns an injector that makes every write put only its first
// n bytes and fail with io.ErrShortWrite. Combine it with OnPath, After or
// Once to aim it. It is safe for concurrent use.
func ShortWrite(n int) Injector {
	return OnKind(OpWrite, &ShortWriteError{N: n})
}

// OnKind returns an injector that fails every operation of the given kind
// with err. It is safe for concurrent use.
func OnKind(kind OpKind, err error) Injector {
	return InjectorFunc(func(op Op) error {
		if op.Kind == kind {
			return err
		}
		return nil
	})
}

// OnPath returns an injector that consults inj only for operations whose
// Path or NewPath contains substring, and lets the others proceed. It is as
// safe for concurrent use as inj.
func OnPath(substring string, inj Injector) Injector {
	return InjectorFunc(func(op Op) error {
		if strings.Contains(op.Path, substring) ||
			(op.NewPath != "" && strings.Contains(op.NewPath, substring)) {
			return inj.MaybeError(op)
		}
		return nil
	})
}

// After returns an injector that lets the first n operations that inj would
// fail proceed, and fails the following ones with inj's error. Operations
// that inj lets through are not counted. It is safe for concurrent use if
// inj is.
func After(n int, inj Injector) Injector {
	var matched atomic.Int64
	return InjectorFunc(func(op Op) error {
		err := inj.MaybeError(op)
		if err == nil {
			return nil
		}
		if matched.Add(1) <= int64(n) {
			return nil
		}
		return err
	})
}

// Once returns an injector that returns the first error inj returns and
// nil ever after. It is safe for concurrent use if inj is; among concurrent
// failing operations exactly one gets the error.
func Once(inj Injector) Injector {
	var done atomic.Bool
	return InjectorFunc(func(op Op) error {
		if done.Load() {
			return nil
		}
		err := inj.MaybeError(op)
		if err == nil || !done.CompareAndSwap(false, true) {
			return nil
		}
		return err
	})
}

// Chain returns an injector that consults injs in order and returns the
// first non-nil error; the injectors after it are not consulted. Put a
// Counter first to count every attempted operation. It is safe for
// concurrent use if each of injs is.
func Chain(injs ...Injector) Injector {
	return InjectorFunc(func(op Op) error {
		for _, inj := range injs {
			if err := inj.MaybeError(op); err != nil {
				return err
			}
		}
		return nil
	})
}

// Toggle switches another injector on and off. It starts disabled: while
// disabled every operation proceeds. It is safe for concurrent use if the
// wrapped injector is.
type Toggle struct {
	inj     Injector
	enabled atomic.Bool
}

// NewToggle returns a disabled Toggle around inj.
func NewToggle(inj Injector) *Toggle { return &Toggle{inj: inj} }

// Enable makes t consult its injector.
func (t *Toggle) Enable() { t.enabled.Store(true) }

// Disable makes t let every operation proceed.
func (t *Toggle) Disable() { t.enabled.Store(false) }

// Enabled reports whether t is enabled.
func (t *Toggle) Enabled() bool { return t.enabled.Load() }

// MaybeError implements Injector.
func (t *Toggle) MaybeError(op Op) error {
	if !t.enabled.Load() {
		return nil
	}
	return t.inj.MaybeError(op)
}

// Counter is an injector that counts operations by kind and never fails
// one. The zero value is ready to use; it is safe for concurrent use.
type Counter struct {
	counts [numOpKinds]atomic.Int64
}

// MaybeError implements Injector: it counts op and returns nil.
func (c *Counter) MaybeError(op Op) error {
	if op.Kind >= 0 && int(op.Kind) < numOpKinds {
		c.counts[op.Kind].Add(1)
	}
	return nil
}

// Count returns the number of operations of the kind seen so far.
func (c *Counter) Count(kind OpKind) int64 {
	if kind < 0 || int(kind) >= numOpKinds {
		return 0
	}
	return c.counts[kind].Load()
}

// Reset sets every count to zero.
func (c *Counter) Reset() {
	for i := range c.counts {
		c.counts[i].Store(0)
	}
}

// Wrap returns an FS that performs each operation on fs unless inj fails it
// (see the package documentation). It is as safe for concurrent use as fs
// and inj are.
func Wrap(fs vfs.FS, inj Injector) vfs.FS {
	return &errorFS{fs: fs, inj: inj}
}

type errorFS struct {
	fs  vfs.FS
	inj Injector
}

// check consults the injector and returns the error to report, if any.
func check(inj Injector, op Op) error {
	err := inj.MaybeError(op)
	if err == nil {
		return nil
	}
	var pe *os.PathError
	var le *os.LinkError
	var se *ShortWriteError
	if errors.As(err, &pe) || errors.As(err, &le) || errors.As(err, &se) {
		return err
	}
	if op.Kind == OpRename {
		return &os.LinkError{Op: "rename", Old: op.Path, New: op.NewPath, Err: err}
	}
	return &os.PathError{Op: op.Kind.String(), Path: op.Path, Err: err}
}

func (e *errorFS) Create(name string) (vfs.File, error) {
	if err := check(e.inj, Op{Kind: OpCreate, Path: name}); err != nil {
		return nil, err
	}
	f, err := e.fs.Create(name)
	return e.wrapFile(f, name, err)
}

func (e *errorFS) OpenReadWrite(name string) (vfs.File, error) {
	if err := check(e.inj, Op{Kind: OpOpen, Path: name}); err != nil {
		return nil, err
	}
	f, err := e.fs.OpenReadWrite(name)
	return e.wrapFile(f, name, err)
}

func (e *errorFS) Open(name string) (vfs.File, error) {
	if err := check(e.inj, Op{Kind: OpOpen, Path: name}); err != nil {
		return nil, err
	}
	f, err := e.fs.Open(name)
	return e.wrapFile(f, name, err)
}

// wrapFile wraps the result of opening name.
func (e *errorFS) wrapFile(f vfs.File, name string, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &errorFile{f: f, name: name, inj: e.inj}, nil
}

func (e *errorFS) Remove(name string) error {
	if err := check(e.inj, Op{Kind: OpRemove, Path: name}); err != nil {
		return err
	}
	return e.fs.Remove(name)
}

func (e *errorFS) Rename(oldname, newname string) error {
	if err := check(e.inj, Op{Kind: OpRename, Path: oldname, NewPath: newname}); err != nil {
		return err
	}
	return e.fs.Rename(oldname, newname)
}

func (e *errorFS) MkdirAll(dir string, perm os.FileMode) error {
	if err := check(e.inj, Op{Kind: OpMkdir, Path: dir}); err != nil {
		return err
	}
	return e.fs.MkdirAll(dir, perm)
}

func (e *errorFS) SyncDir(dir string) error {
	if err := check(e.inj, Op{Kind: OpSyncDir, Path: dir}); err != nil {
		return err
	}
	return e.fs.SyncDir(dir)
}

func (e *errorFS) List(dir string) ([]string, error) {
	if err := check(e.inj, Op{Kind: OpList, Path: dir}); err != nil {
		return nil, err
	}
	return e.fs.List(dir)
}

func (e *errorFS) Lock(name string) (io.Closer, error) {
	if err := check(e.inj, Op{Kind: OpLock, Path: name}); err != nil {
		return nil, err
	}
	return e.fs.Lock(name)
}

func (e *errorFS) Stat(name string) (os.FileInfo, error) {
	if err := check(e.inj, Op{Kind: OpStat, Path: name}); err != nil {
		return nil, err
	}
	return e.fs.Stat(name)
}

// errorFile wraps a File of the underlying FS.
type errorFile struct {
	f    vfs.File
	name string
	inj  Injector
}

func (f *errorFile) ReadAt(p []byte, off int64) (int, error) {
	if err := check(f.inj, Op{Kind: OpRead, Path: f.name, Off: off, Len: len(p)}); err != nil {
		return 0, err
	}
	return f.f.ReadAt(p, off)
}

func (f *errorFile) WriteAt(p []byte, off int64) (int, error) {
	err := check(f.inj, Op{Kind: OpWrite, Path: f.name, Off: off, Len: len(p)})
	if err == nil {
		return f.f.WriteAt(p, off)
	}
	var se *ShortWriteError
	if !errors.As(err, &se) {
		return 0, err
	}
	n := min(max(se.N, 0), len(p))
	if n > 0 {
		if w, werr := f.f.WriteAt(p[:n], off); werr != nil {
			return w, werr
		}
	}
	return n, &os.PathError{Op: "write", Path: f.name, Err: se.cause()}
}

func (f *errorFile) Close() error {
	if err := check(f.inj, Op{Kind: OpClose, Path: f.name}); err != nil {
		return err
	}
	return f.f.Close()
}

func (f *errorFile) Sync() error {
	if err := check(f.inj, Op{Kind: OpSync, Path: f.name}); err != nil {
		return err
	}
	return f.f.Sync()
}

func (f *errorFile) Truncate(size int64) error {
	if err := check(f.inj, Op{Kind: OpTruncate, Path: f.name, Off: size}); err != nil {
		return err
	}
	return f.f.Truncate(size)
}

func (f *errorFile) Size() (int64, error) {
	if err := check(f.inj, Op{Kind: OpSize, Path: f.name}); err != nil {
		return 0, err
	}
	return f.f.Size()
}
