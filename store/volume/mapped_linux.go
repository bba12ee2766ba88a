package volume

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// datMap is a read-only shared mapping of one generation of a volume's .dat
// file, with a read-only descriptor of its own: the server sends a mapped
// needle's bytes from it with sendfile(2), and ReadRef reads a needle that
// is not resident from it with pread(2). It is a file description of its
// own (the file reopened through /proc/self/fd), marked
// POSIX_FADV_RANDOM: a pread of a needle then reads exactly the needle's
// pages, where the kernel would otherwise read ahead (the device's
// readahead window, often megabytes) whenever two reads happen to touch
// neighbouring needles or the start of the file. The volume's own
// descriptor, which recovery and compaction read sequentially, keeps its
// readahead.
//
// The .dat is append-only and a needle is never rewritten in place (a
// compaction builds a new file and swaps it in), so bytes the index points
// at never change under a reader. The mapping covers the volume's whole
// possible extent (its size limit, or its size when larger) from the
// start, so it never has to grow; only offsets below the durable tail are
// ever touched, and a page past the end of the file is never faulted.
//
// A datMap is reference-counted: the volume holds one reference while the
// generation is current, and every Ref that points into it holds one until
// it is released. The last release unmaps it and closes the descriptor, so
// a compaction's swap or Close never pulls the bytes from under an answer
// still being written from them.
type datMap struct {
	data []byte
	fd   int
	// direct is the file opened once more for direct reads (see
	// direct.go), closed with the mapping; nil when the volume does not
	// read direct or the file system refused it.
	direct vfs.File
	refs   atomic.Int64
}

// mapDat maps the file under f (which must be a file of the operating
// system's file system; see vfs.OSFile) for reads of up to extent bytes.
// It returns nil, nil when f is not such a file: the volume then reads with
// pread only.
func mapDat(f vfs.File, extent int64) (*datMap, error) {
	osf, ok := vfs.OSFile(f)
	if !ok {
		return nil, nil
	}
	rc, err := osf.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("map: %w", err)
	}
	fd := -1
	var oerr error
	// Reopen the very file f has open (a rename may have replaced its
	// name), as a new file description.
	if err := rc.Control(func(s uintptr) {
		fd, oerr = unix.Open("/proc/self/fd/"+strconv.Itoa(int(s)), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("map: %w", err)
	}
	if oerr != nil {
		return nil, fmt.Errorf("map: reopen: %w", oerr)
	}
	if err := unix.Fadvise(fd, 0, 0, unix.FADV_RANDOM); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("map: fadvise: %w", err)
	}
	page := int64(os.Getpagesize())
	extent = (extent + page - 1) &^ (page - 1)
	data, err := unix.Mmap(fd, 0, int(extent), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("map %d bytes: %w", extent, err)
	}
	// No readahead on faults: a page that is not resident is read by
	// pread (see ReadRef), and the device's readahead window (often
	// megabytes) would otherwise be read around a fault that slips
	// through between the residency check and the hash.
	if err := unix.Madvise(data, unix.MADV_RANDOM); err != nil {
		unix.Munmap(data)
		unix.Close(fd)
		return nil, fmt.Errorf("map: madvise: %w", err)
	}
	m := &datMap{data: data, fd: fd}
	m.refs.Store(1)
	return m, nil
}

// acquire takes a reference. The caller must already hold one, or hold
// the volume's lock while the volume's reference is alive.
func (m *datMap) acquire() { m.refs.Add(1) }

// release drops a reference; the last one unmaps and closes.
func (m *datMap) release() {
	if n := m.refs.Add(-1); n > 0 {
		return
	} else if n < 0 {
		panic("volume: datMap released more often than acquired")
	}
	unix.Munmap(m.data)
	unix.Close(m.fd)
	if m.direct != nil {
		m.direct.Close()
	}
}

// covers reports whether [off, off+n) lies inside the mapping.
func (m *datMap) covers(off int64, n int) bool {
	return off >= 0 && off+int64(n) <= int64(len(m.data))
}

// residentChunk is how many pages one mincore call asks about; the vector
// lives on the stack.
const residentChunk = 256

// resident reports whether every page of [off, off+n) is in the page
// cache, with mincore(2): then hashing and sending them reads no disk.
// A range that is not wholly resident is read with one pread instead,
// which reads exactly the missing pages in one request, where faults on
// the mapping would read them page by page.
func (m *datMap) resident(off int64, n int) bool {
	page := int64(os.Getpagesize())
	start := off &^ (page - 1)
	end := off + int64(n)
	var vec [residentChunk]byte
	for start < end {
		chunk := min(end-start, residentChunk*page)
		pages := int((chunk + page - 1) / page)
		if !mincore(m.data[start:start+chunk], vec[:pages]) {
			return false
		}
		for _, v := range vec[:pages] {
			if v&1 == 0 {
				return false
			}
		}
		start += chunk
	}
	return true
}

// mincore reports into vec, one byte per page of b (which must start on a
// page), whether the page is resident (bit 0); false if the call failed.
func mincore(b, vec []byte) bool {
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), uintptr(unsafe.Pointer(unsafe.SliceData(vec))))
	return errno == 0
}

// ReadAt reads len(b) bytes at off with one read (more only if the
// kernel returns less, as at the end of the file). The read is first tried
// without waiting for the device (preadv2 RWF_NOWAIT): pages all in the
// page cache are copied at once. Otherwise that try has started reading
// the missing pages (only those: the descriptor is POSIX_FADV_RANDOM),
// and the read waits for them through the process's io_uring
// (vfs.RingPread), so no thread blocks on the disk; still one disk read.
// Without a ring, or where RWF_NOWAIT is refused, it is a plain pread.
func (m *datMap) ReadAt(b []byte, off int64) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, err := tryNoWait(m.fd, b, off)
	switch {
	case err == nil && n == len(b):
		return n, nil
	case err == nil && n == 0:
		return 0, io.EOF
	case err == nil || err == unix.EAGAIN:
		return m.readRing(b, off, max(n, 0))
	}
	return m.pread(b, off, 0)
}

// coldReader reads a mapped volume's file for a needle known not to be
// all in the page cache: the caller's own RWF_NOWAIT try was just refused
// (TryReadRef on an event loop, then ReadRefCold off it), or mincore said
// a page is missing. It skips ReadAt's try, which would be refused again
// (or, when the refused try's reads have just arrived, would save only
// the completion's wake-up), and waits for the disk through the ring at
// once: one disk read, one system call fewer per image.
type coldReader struct{ m *datMap }

func (r coldReader) ReadAt(b []byte, off int64) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	return r.m.readRing(b, off, 0)
}

// readRing reads b[got:] (b at off, of which the first got bytes are
// read) through the process's io_uring, then with pread for what the ring
// did not read (no ring, a read it refused, a short read).
func (m *datMap) readRing(b []byte, off int64, got int) (int, error) {
	if n, ok, err := ringPread(m.fd, b[got:], off+int64(got)); ok {
		if err != nil {
			return got, &os.PathError{Op: "pread", Path: "volume file", Err: err}
		}
		if got += n; got < len(b) && n == 0 {
			return got, io.EOF
		}
	}
	return m.pread(b, off, got)
}

// pread reads b[got:] (b at off, of which the first got bytes are read)
// with pread(2), until b is full or the file ends.
func (m *datMap) pread(b []byte, off int64, got int) (int, error) {
	for got < len(b) {
		n, err := unix.Pread(m.fd, b[got:], off+int64(got))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return got, &os.PathError{Op: "pread", Path: "volume file", Err: err}
		}
		if n == 0 {
			return got, io.EOF
		}
		got += n
	}
	return got, nil
}

// preadReader reads a mapped file with plain pread(2) on the mapping's
// POSIX_FADV_RANDOM descriptor: the pages asked for and no readahead,
// without ReadAt's RWF_NOWAIT try and io_uring wait (EC volumes' buffered
// reads, made off the event loops).
type preadReader struct{ m *datMap }

func (r preadReader) ReadAt(b []byte, off int64) (int, error) { return r.m.pread(b, off, 0) }

// nowaitReader reads a mapped volume's file with preadv2(2) and
// RWF_NOWAIT: a read that would wait for the disk fails with
// ErrWouldBlock (a read that finds only some of its pages too).
type nowaitReader struct{ m *datMap }

func (r nowaitReader) ReadAt(b []byte, off int64) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, err := tryNoWait(r.m.fd, b, off)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN || err == unix.EOPNOTSUPP || err == nil && n < len(b):
			return 0, ErrWouldBlock
		case err != nil:
			return 0, &os.PathError{Op: "preadv2", Path: "volume file", Err: err}
		}
		return n, nil
	}
}

// tryNoWait and ringPread are preadNoWait and vfs.RingPread, variables so
// that tests can count the tries and take the ring away.
var (
	tryNoWait = preadNoWait
	ringPread = vfs.RingPread
)

// preadNoWait is preadv2(fd, b, off, RWF_NOWAIT): the bytes of b at off
// that are in the page cache, or EAGAIN when the first page is not (its
// read started). One iovec on the stack: no allocation.
func preadNoWait(fd int, b []byte, off int64) (int, error) {
	iov := unix.Iovec{Base: &b[0]}
	iov.SetLen(len(b))
	n, _, errno := unix.Syscall6(unix.SYS_PREADV2, uintptr(fd), uintptr(unsafe.Pointer(&iov)), 1, uintptr(off), uintptr(off>>32), unix.RWF_NOWAIT)
	if errno != 0 {
		return -1, errno
	}
	return int(n), nil
}

// errMapFault is returned by decode when touching the mapping faulted (an
// I/O error paging it in, or a file shorter than the index says).
var errMapFault = errors.New("volume: fault reading the mapped file")

// decodeMapped runs decode on b, mapped bytes of the file at offset off,
// turning a fault into errMapFault.
func decodeMapped(decode func([]byte) (needle.Needle, error), b []byte, off int64) (nd needle.Needle, err error) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(interface{ Addr() uintptr }); !ok {
				panic(r)
			}
			nd, err = needle.Needle{}, fmt.Errorf("%w at %d: %v", errMapFault, off, r)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return decode(b)
}

// copyMapped copies src, mapped bytes of the file at offset off, into
// dst, turning a fault into errMapFault.
func copyMapped(dst, src []byte, off int64) error {
	_, err := decodeMapped(func(b []byte) (needle.Needle, error) {
		copy(dst, b)
		return needle.Needle{}, nil
	}, src, off)
	return err
}
