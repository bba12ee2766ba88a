package vfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// MemFS is an in-memory FS that can simulate a power cut. It is safe for
// concurrent use, and so are the Files it returns.
//
// Paths are cleaned with path/filepath.Clean and resolved from a single root:
// "/a/b", "a/b" and "a/./b" name the same file, and ".." never climbs above
// the root. The empty path names nothing. Directories must exist (MkdirAll)
// before files are created in them. Errors are *os.PathError (*os.LinkError
// for Rename) wrapping the same errors Linux would report, so errors.Is works
// with os.ErrNotExist, os.ErrExist, os.ErrClosed and the syscall errnos.
// Deviations from Linux: Open of a directory fails with syscall.EISDIR (use
// List and SyncDir for directories), and SyncDir of a file fails with
// syscall.ENOTDIR.
//
// Durability is tracked as on a POSIX file system after a power cut, and
// CrashClone returns the surviving state:
//
//   - A file's contents and size are durable as of its last File.Sync; later
//     writes and truncates (including the truncation done by Create on an
//     existing file) are lost.
//   - An entry of a directory (a file or a subdirectory, made by Create,
//     OpenReadWrite, MkdirAll or Rename, or deleted by Remove or Rename) is
//     durable only after SyncDir of that directory. This holds for
//     directories made by MkdirAll too: sync their parents.
//   - A rename between two directories is durable in each directory when that
//     directory is synced; if only the destination is synced, the clone holds
//     the file under both names (as two independent copies).
//
// CrashCloneTorn models torn writes on top of that: the pages written since
// a file's last Sync each reach the disk or not, independently.
type MemFS struct {
	mu struct {
		sync.Mutex
		// root is the root directory. The directory fields (children,
		// synced) of every node are guarded by mu.
		root *memNode
		// locks holds the names locked with Lock; a power cut (CrashClone)
		// releases them all.
		locks map[string]bool
	}
}

// memNode is a file or a directory. A node is shared by every name that
// refers to it (the live entry and, until a SyncDir, the durable one).
type memNode struct {
	isDir bool

	// Directory entries, guarded by MemFS.mu. children is the live view;
	// synced is the view as of the last SyncDir of this directory.
	children map[string]*memNode
	synced   map[string]*memNode

	mu struct {
		sync.RWMutex
		// data is the live contents of a file; synced its contents as of
		// the last Sync. The two never share a backing array.
		data   []byte
		synced []byte
		// dirty reports whether data may differ from synced. When it is
		// set, data[:dirtyFrom] and synced[:dirtyFrom] are equal (as far
		// as both extend).
		dirty     bool
		dirtyFrom int
		// pages holds the index of every page (PageSize bytes) written or
		// truncated since the last Sync; CrashCloneTorn tears them.
		pages   map[int]bool
		modTime time.Time
	}
}

// PageSize is the unit of CrashCloneTorn's torn writes.
const PageSize = 4096

// NewMem returns an empty in-memory file system holding only its root
// directory. Nothing in it is durable until synced.
func NewMem() *MemFS {
	m := &MemFS{}
	m.mu.root = newDirNode()
	return m
}

func newDirNode() *memNode {
	n := &memNode{
		isDir:    true,
		children: make(map[string]*memNode),
		synced:   make(map[string]*memNode),
	}
	n.mu.modTime = time.Now()
	return n
}

func newFileNode() *memNode {
	n := &memNode{}
	n.mu.modTime = time.Now()
	return n
}

// CrashClone returns a new, independent MemFS holding what would survive a
// power cut at this moment: for each file only the bytes and size as of its
// last successful Sync, and for each directory only the entries as of its
// last SyncDir (see MemFS). Open files of m are not affected and remain
// usable.
func (m *MemFS) CrashClone() *MemFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := &MemFS{}
	c.mu.root = m.mu.root.durableCloneLocked(nil)
	return c
}

// CrashCloneTorn is CrashClone for a power cut in the middle of writing
// back: directory entries survive as CrashClone says, but each file that
// was written or truncated since its last Sync gets, chosen independently
// by a PRNG seeded with seed (so a failing case can be replayed):
//
//   - its durable size or its live size;
//   - for each page (PageSize bytes, at a multiple of PageSize) written or
//     truncated since the last Sync, one of: the old page (its durable
//     contents), the new page (its live contents), or a zeroed page (the
//     bytes that changed since the last Sync read as zeros, as a block that
//     was allocated but never written does).
//
// Bytes past the durable size that no page outcome supplies read as zeros.
// Files are visited in name order, so equal seeds give equal clones of
// equal file systems.
func (m *MemFS) CrashCloneTorn(seed uint64) *MemFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := &MemFS{}
	c.mu.root = m.mu.root.durableCloneLocked(rand.New(rand.NewPCG(seed, 0x746f726e)))
	return c
}

// tornLocked returns what a torn write-back leaves of the file (see
// CrashCloneTorn). The caller holds n.mu.
func (n *memNode) tornLocked(r *rand.Rand) []byte {
	synced, data := n.mu.synced, n.mu.data
	if !n.mu.dirty {
		return bytes.Clone(synced)
	}
	size := len(synced)
	if len(data) != len(synced) && r.IntN(2) == 0 {
		size = len(data)
	}
	out := make([]byte, size)
	copy(out, synced)
	for _, p := range slices.Sorted(maps.Keys(n.mu.pages)) {
		lo := p * PageSize
		if lo >= size {
			continue
		}
		hi := min(lo+PageSize, size)
		switch r.IntN(3) {
		case 0: // old
		case 1: // new
			clear(out[lo:hi])
			if lo < len(data) {
				copy(out[lo:hi], data[lo:min(hi, len(data))])
			}
		case 2: // zeroed where it changed
			for i := lo; i < hi; i++ {
				if i >= len(synced) || i >= len(data) || data[i] != synced[i] {
					out[i] = 0
				}
			}
		}
	}
	return out
}

// durableCloneLocked returns a deep copy of the durable state of n, torn
// by r when r is not nil (see CrashCloneTorn). The caller holds MemFS.mu.
func (n *memNode) durableCloneLocked(r *rand.Rand) *memNode {
	n.mu.RLock()
	modTime := n.mu.modTime
	var synced []byte
	if !n.isDir {
		if r != nil {
			synced = n.tornLocked(r)
		} else {
			synced = bytes.Clone(n.mu.synced)
		}
	}
	n.mu.RUnlock()

	if !n.isDir {
		c := newFileNode()
		c.mu.data = synced
		c.mu.synced = bytes.Clone(synced)
		c.mu.modTime = modTime
		return c
	}
	c := newDirNode()
	c.mu.modTime = modTime
	for _, name := range slices.Sorted(maps.Keys(n.synced)) {
		child := n.synced[name]
		cc := child.durableCloneLocked(r)
		c.children[name] = cc
		c.synced[name] = cc
	}
	return c
}

// splitPath cleans name and returns its components below the root, or nil
// for the root itself.
func splitPath(name string) []string {
	p := path.Clean("/" + filepath.ToSlash(name))
	if p == "/" {
		return nil
	}
	return strings.Split(p[1:], "/")
}

// walkLocked returns the directory named by parts. The caller holds mu.
func (m *MemFS) walkLocked(parts []string) (*memNode, error) {
	n := m.mu.root
	for _, p := range parts {
		if !n.isDir {
			return nil, syscall.ENOTDIR
		}
		c, ok := n.children[p]
		if !ok {
			return nil, os.ErrNotExist
		}
		n = c
	}
	return n, nil
}

// lookupLocked returns the node named by name. The caller holds mu.
func (m *MemFS) lookupLocked(name string) (*memNode, error) {
	if name == "" {
		return nil, os.ErrNotExist
	}
	return m.walkLocked(splitPath(name))
}

// parentLocked returns the directory holding name and name's last
// component. It fails with errRoot for the root. The caller holds mu.
func (m *MemFS) parentLocked(name string) (dir *memNode, base string, err error) {
	if name == "" {
		return nil, "", os.ErrNotExist
	}
	parts := splitPath(name)
	if len(parts) == 0 {
		return nil, "", errRoot
	}
	dir, err = m.walkLocked(parts[:len(parts)-1])
	if err != nil {
		return nil, "", err
	}
	if !dir.isDir {
		return nil, "", syscall.ENOTDIR
	}
	return dir, parts[len(parts)-1], nil
}

// errRoot reports an operation that needs a parent applied to the root.
var errRoot = syscall.EBUSY

func (n *memNode) touch() {
	n.mu.Lock()
	n.mu.modTime = time.Now()
	n.mu.Unlock()
}

func (m *MemFS) openFile(op, name string, create, trunc, writable bool) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir, base, err := m.parentLocked(name)
	if err == errRoot {
		err = syscall.EISDIR
	}
	if err != nil {
		return nil, &os.PathError{Op: op, Path: name, Err: err}
	}
	n, ok := dir.children[base]
	if !ok {
		if !create {
			return nil, &os.PathError{Op: op, Path: name, Err: os.ErrNotExist}
		}
		n = newFileNode()
		dir.children[base] = n
		dir.touch()
	}
	if n.isDir {
		return nil, &os.PathError{Op: op, Path: name, Err: syscall.EISDIR}
	}
	if trunc {
		n.mu.Lock()
		n.truncateLocked(0)
		n.mu.Unlock()
	}
	return &memFile{node: n, name: name, readOnly: !writable}, nil
}

// Create implements FS.
func (m *MemFS) Create(name string) (File, error) {
	return m.openFile("open", name, true, true, true)
}

// OpenReadWrite implements FS.
func (m *MemFS) OpenReadWrite(name string) (File, error) {
	return m.openFile("open", name, true, false, true)
}

// Open implements FS.
func (m *MemFS) Open(name string) (File, error) {
	return m.openFile("open", name, false, false, false)
}

// Remove implements FS.
func (m *MemFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir, base, err := m.parentLocked(name)
	if err != nil {
		return &os.PathError{Op: "remove", Path: name, Err: err}
	}
	n, ok := dir.children[base]
	if !ok {
		return &os.PathError{Op: "remove", Path: name, Err: os.ErrNotExist}
	}
	if n.isDir && len(n.children) > 0 {
		return &os.PathError{Op: "remove", Path: name, Err: syscall.ENOTEMPTY}
	}
	delete(dir.children, base)
	dir.touch()
	return nil
}

// Rename implements FS. Like os.Rename, it fails with os.ErrExist when
// newname is an existing directory, and its errors are *os.LinkError.
func (m *MemFS) Rename(oldname, newname string) error {
	linkErr := func(err error) error {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	oldDir, oldBase, err := m.parentLocked(oldname)
	if err != nil {
		return linkErr(err)
	}
	n, ok := oldDir.children[oldBase]
	if !ok {
		return linkErr(os.ErrNotExist)
	}
	newDir, newBase, err := m.parentLocked(newname)
	if err != nil {
		return linkErr(err)
	}
	existing, ok := newDir.children[newBase]
	if ok && existing == n && oldDir == newDir && oldBase == newBase {
		return nil
	}
	if ok && existing.isDir {
		return linkErr(os.ErrExist)
	}
	if ok && n.isDir {
		return linkErr(syscall.ENOTDIR)
	}
	if n.isDir {
		// A directory cannot move into its own subtree.
		oldParts, newParts := splitPath(oldname), splitPath(newname)
		if len(newParts) > len(oldParts) && slices.Equal(newParts[:len(oldParts)], oldParts) {
			return linkErr(syscall.EINVAL)
		}
	}
	delete(oldDir.children, oldBase)
	newDir.children[newBase] = n
	oldDir.touch()
	if newDir != oldDir {
		newDir.touch()
	}
	return nil
}

// MkdirAll implements FS. perm is ignored.
func (m *MemFS) MkdirAll(dir string, perm os.FileMode) error {
	if dir == "" {
		return &os.PathError{Op: "mkdir", Path: dir, Err: os.ErrNotExist}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.mu.root
	parts := splitPath(dir)
	for i, p := range parts {
		c, ok := n.children[p]
		if !ok {
			c = newDirNode()
			n.children[p] = c
			n.touch()
		} else if !c.isDir {
			return &os.PathError{Op: "mkdir", Path: "/" + strings.Join(parts[:i+1], "/"), Err: syscall.ENOTDIR}
		}
		n = c
	}
	return nil
}

// SyncDir implements FS: the current entries of dir become durable.
func (m *MemFS) SyncDir(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.lookupLocked(dir)
	if err == nil && !n.isDir {
		err = syscall.ENOTDIR
	}
	if err != nil {
		return &os.PathError{Op: "sync", Path: dir, Err: err}
	}
	n.synced = maps.Clone(n.children)
	return nil
}

// List implements FS.
func (m *MemFS) List(dir string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.lookupLocked(dir)
	if err == nil && !n.isDir {
		err = syscall.ENOTDIR
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return slices.Sorted(maps.Keys(n.children)), nil
}

// Stat implements FS. The FileInfo's Sys method returns nil.
func (m *MemFS) Stat(name string) (os.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.lookupLocked(name)
	if err != nil {
		return nil, &os.PathError{Op: "stat", Path: name, Err: err}
	}
	return n.stat(filepath.Base(filepath.Clean(name))), nil
}

func (n *memNode) stat(name string) *memFileInfo {
	n.mu.RLock()
	defer n.mu.RUnlock()
	fi := &memFileInfo{name: name, modTime: n.mu.modTime, mode: 0o644}
	if n.isDir {
		fi.mode = fs.ModeDir | 0o755
	} else {
		fi.size = int64(len(n.mu.data))
	}
	return fi
}

// truncateLocked sets the live size of a file. The caller holds n.mu.
func (n *memNode) truncateLocked(size int) {
	old := len(n.mu.data)
	if size <= old {
		n.mu.data = n.mu.data[:size]
	} else {
		n.mu.data = slices.Grow(n.mu.data, size-old)[:size]
		// The spare capacity may hold bytes from before an earlier
		// truncation.
		clear(n.mu.data[old:])
	}
	n.markDirtyLocked(min(old, size))
	n.markPagesLocked(min(old, size), max(old, size))
}

// markPagesLocked records that bytes [lo, hi) were written or truncated
// since the last Sync. The caller holds n.mu.
func (n *memNode) markPagesLocked(lo, hi int) {
	if hi <= lo {
		hi = lo + 1 // a truncation to the same size still touches its page
	}
	if n.mu.pages == nil {
		n.mu.pages = map[int]bool{}
	}
	for p := lo / PageSize; p <= (hi-1)/PageSize; p++ {
		n.mu.pages[p] = true
	}
}

func (n *memNode) markDirtyLocked(from int) {
	if !n.mu.dirty || from < n.mu.dirtyFrom {
		n.mu.dirtyFrom = from
	}
	n.mu.dirty = true
	n.mu.modTime = time.Now()
}

// memFileInfo is the os.FileInfo of a MemFS entry.
type memFileInfo struct {
	name    string
	size    int64
	mode    fs.FileMode
	modTime time.Time
}

func (fi *memFileInfo) Name() string       { return fi.name }
func (fi *memFileInfo) Size() int64        { return fi.size }
func (fi *memFileInfo) Mode() fs.FileMode  { return fi.mode }
func (fi *memFileInfo) ModTime() time.Time { return fi.modTime }
func (fi *memFileInfo) IsDir() bool        { return fi.mode.IsDir() }
func (fi *memFileInfo) Sys() any           { return nil }

// memFile is an open MemFS file. All of its methods are safe for concurrent
// use.
type memFile struct {
	node     *memNode
	name     string
	readOnly bool
	closed   atomic.Bool
}

var errNegativeOffset = errors.New("negative offset")

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if f.closed.Load() {
		return 0, &os.PathError{Op: "read", Path: f.name, Err: os.ErrClosed}
	}
	if off < 0 {
		return 0, &os.PathError{Op: "readat", Path: f.name, Err: errNegativeOffset}
	}
	if len(p) == 0 {
		return 0, nil
	}
	f.node.mu.RLock()
	defer f.node.mu.RUnlock()
	data := f.node.mu.data
	if off >= int64(len(data)) {
		return 0, io.EOF
	}
	n := copy(p, data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	if f.closed.Load() {
		return 0, &os.PathError{Op: "write", Path: f.name, Err: os.ErrClosed}
	}
	if f.readOnly {
		return 0, &os.PathError{Op: "write", Path: f.name, Err: syscall.EBADF}
	}
	if off < 0 {
		return 0, &os.PathError{Op: "writeat", Path: f.name, Err: errNegativeOffset}
	}
	end := off + int64(len(p))
	if end < off || end != int64(int(end)) {
		return 0, &os.PathError{Op: "write", Path: f.name, Err: syscall.EFBIG}
	}
	if len(p) == 0 {
		return 0, nil
	}
	f.node.mu.Lock()
	defer f.node.mu.Unlock()
	if int(end) > len(f.node.mu.data) {
		f.node.truncateLocked(int(end))
	}
	copy(f.node.mu.data[off:], p)
	f.node.markDirtyLocked(int(off))
	f.node.markPagesLocked(int(off), int(end))
	return len(p), nil
}

func (f *memFile) Close() error {
	if !f.closed.CompareAndSwap(false, true) {
		return &os.PathError{Op: "close", Path: f.name, Err: os.ErrClosed}
	}
	return nil
}

// Sync makes the file's current contents and size durable (see CrashClone).
// It works on files opened read-only too, as fsync does.
func (f *memFile) Sync() error {
	if f.closed.Load() {
		return &os.PathError{Op: "fdatasync", Path: f.name, Err: os.ErrClosed}
	}
	n := f.node
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.mu.dirty {
		return nil
	}
	lo := min(n.mu.dirtyFrom, len(n.mu.synced), len(n.mu.data))
	n.mu.synced = append(n.mu.synced[:lo], n.mu.data[lo:]...)
	n.mu.dirty = false
	clear(n.mu.pages)
	return nil
}

func (f *memFile) Truncate(size int64) error {
	if f.closed.Load() {
		return &os.PathError{Op: "truncate", Path: f.name, Err: os.ErrClosed}
	}
	// ftruncate on a read-only descriptor fails with EINVAL on Linux.
	if f.readOnly || size < 0 {
		return &os.PathError{Op: "truncate", Path: f.name, Err: syscall.EINVAL}
	}
	if size != int64(int(size)) {
		return &os.PathError{Op: "truncate", Path: f.name, Err: syscall.EFBIG}
	}
	f.node.mu.Lock()
	defer f.node.mu.Unlock()
	f.node.truncateLocked(int(size))
	return nil
}

func (f *memFile) Size() (int64, error) {
	if f.closed.Load() {
		return 0, &os.PathError{Op: "stat", Path: f.name, Err: os.ErrClosed}
	}
	f.node.mu.RLock()
	defer f.node.mu.RUnlock()
	return int64(len(f.node.mu.data)), nil
}

// memLock releases a MemFS lock when closed.
type memLock struct {
	m    *MemFS
	name string
	once sync.Once
}

func (l *memLock) Close() error {
	l.once.Do(func() {
		l.m.mu.Lock()
		delete(l.m.mu.locks, l.name)
		l.m.mu.Unlock()
	})
	return nil
}

// Lock implements FS. The lock file is created like OpenReadWrite does;
// locks live in memory and a crash clone has none.
func (m *MemFS) Lock(name string) (io.Closer, error) {
	f, err := m.OpenReadWrite(name)
	if err != nil {
		return nil, err
	}
	f.Close()
	name = filepath.Clean(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.locks[name] {
		return nil, fmt.Errorf("%w: %s", ErrLocked, name)
	}
	if m.mu.locks == nil {
		m.mu.locks = map[string]bool{}
	}
	m.mu.locks[name] = true
	return &memLock{m: m, name: name}, nil
}
