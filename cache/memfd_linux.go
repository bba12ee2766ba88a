package cache

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/serve"
)

// arenaExtent is the virtual size of a cache's memfd and its mapping:
// eight times the capacity (slots round images up to a power of two, and
// a freed slot serves its class first), at least 1 GiB and at most 1 TiB.
// The file is sparse: only the pages written use memory.
func arenaExtent(capacity int64) int64 {
	const gib = 1 << 30
	return min(max((8*capacity+gib-1)/gib*gib, gib), 1<<40)
}

// newArena creates the memfd of a cache of the given capacity and maps it.
// The file's size is sealed, so no one can shrink it under the mapping.
// The mapping and the file are released once the arena is unreachable
// (no entry, answer or cache points at it any more).
func newArena(capacity int64, minLen int) (*arena, error) {
	if strconv.IntSize < 64 {
		return nil, errors.New("the memfd's extent needs a 64-bit address space")
	}
	if b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled"); err == nil && strings.Contains(string(b), "[force]") {
		return nil, errors.New("shmem transparent huge pages are forced (shmem_enabled is force): slots cannot own their pages")
	}
	extent := arenaExtent(capacity)
	fd, err := unix.MemfdCreate("haybale-cache", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, extent); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("memfd: ftruncate to %d bytes: %w", extent, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("memfd: sealing its size: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, int(extent), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("memfd: mapping %d bytes: %w", extent, err)
	}
	// Base pages only: a slot must own its pages (see arena.go), and the
	// hole punch of part of a huge page that a socket still references
	// zeroes that part in place instead of dropping it.
	if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil {
		unix.Munmap(mem)
		unix.Close(fd)
		return nil, fmt.Errorf("memfd: madvise(MADV_NOHUGEPAGE): %w", err)
	}
	a := &arena{
		mem: mem, fd: fd, min: minLen,
		pageShift: uint(bitsOf(os.Getpagesize())),
		punch: func(off, n int64) error {
			return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		},
	}
	runtime.AddCleanup(a, func(m struct {
		mem []byte
		fd  int
	}) {
		unix.Munmap(m.mem)
		unix.Close(m.fd)
	}, struct {
		mem []byte
		fd  int
	}{mem, fd})
	return a, nil
}

// bitsOf returns log2 of a power of two.
func bitsOf(n int) int {
	s := 0
	for 1<<s < n {
		s++
	}
	return s
}

// largeHit is the body of a fast hit answered from the memfd over a plain
// TCP connection. serveFast corks the socket (TCP_CORK) before fasthttp
// writes the headers (Response.ImmediateHeaderFlush), WriteTo sends the
// image with sendfile(2) from the memfd and uncorks, so headers and image
// leave in full packets, as nginx's tcp_nopush does. Close, which
// fasthttp calls once the answer was written or abandoned, uncorks the
// socket if WriteTo did not, and drops the answer's reference to the slot.
type largeHit struct {
	s      *slot
	conn   syscall.RawConn
	corked bool
}

var largeHits = sync.Pool{New: func() any { return new(largeHit) }}

// newLargeHit returns the body of a sendfile answer of s over conn, with
// the socket corked, or nil when conn is not a plain TCP connection. The
// answer's reference to s passes to the body.
func newLargeHit(conn net.Conn, s *slot) *largeHit {
	rc := serve.RawTCP(conn)
	if rc == nil {
		return nil
	}
	h := largeHits.Get().(*largeHit)
	*h = largeHit{s: s, conn: rc}
	h.corked = setCork(rc, true) == nil
	return h
}

// setCork sets or clears TCP_CORK on the socket.
func setCork(rc syscall.RawConn, on bool) error {
	v := 0
	if on {
		v = 1
	}
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, v)
	})
	if err != nil {
		return err
	}
	return serr
}

// Read is never called: fasthttp uses WriteTo (SupportsBodyWriteTo).
func (h *largeHit) Read([]byte) (int, error) { return 0, io.ErrNoProgress }

// SupportsBodyWriteTo tells fasthttp to send the body with WriteTo.
func (h *largeHit) SupportsBodyWriteTo() bool { return true }

// WriteTo sends the image with sendfile from the memfd (the file's offset
// is never used or moved), under the connection's write deadline, then
// uncorks the socket. w, fasthttp's buffered writer, was flushed before
// (ImmediateHeaderFlush) and is not used.
func (h *largeHit) WriteTo(io.Writer) (int64, error) {
	sent, err := serve.SendFile(h.conn, h.s.a.fd, h.s.off, int64(h.s.n))
	if err == nil && h.corked && setCork(h.conn, false) == nil {
		h.corked = false
	}
	return sent, err
}

// Close uncorks the socket if WriteTo did not, drops the answer's
// reference to the slot and recycles h.
func (h *largeHit) Close() error {
	if h.corked {
		setCork(h.conn, false) // fails only on a closed connection
	}
	h.s.release()
	*h = largeHit{}
	largeHits.Put(h)
	return nil
}
