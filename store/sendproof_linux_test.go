package store

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// TestSendProofCutsShort: a large image answered from its verified
// mapping to a client that reads slowly, whose pages leave the page cache
// while the answer waits for the socket (reclaim unmaps them from every
// mapping, then drops them), is cut short: the client gets a prefix of
// the image's bytes, fewer than its Content-Length, then the end of the
// connection, never bytes that were not verified; the answer is counted.
// A new request then gets the whole image, verified again. The test needs
// the server's socket to hold less than the whole answer when the pages
// leave (the image is 8 MiB, the client's receive buffer 4 KiB); on a host
// whose socket buffers took the whole answer at once it is skipped.
func TestSendProofCutsShort(t *testing.T) {
	t.Run("fasthttp", func(t *testing.T) { testSendProofCutsShort(t, false) })
	t.Run("loop", func(t *testing.T) { testSendProofCutsShort(t, true) })
}

func testSendProofCutsShort(t *testing.T, loop bool) {
	dir := t.TempDir()
	ts := startServer(t, Options{Dir: dir, FS: vfs.Default}, ServerOptions{EventLoop: loop})
	ts.allocate(t, 1)
	p := randomPhoto(rand.New(rand.NewPCG(5, 6)), 1, 0x99, 1<<20) // l: 8 MiB, more than the socket buffers (loopback's grow to megabytes)
	ts.writePhoto(t, p)
	want := p.data[needle.SizeLarge]
	target := needle.ImagePath(p.id, needle.SizeLarge, "jpg")
	// A first read maps and verifies the needle (its verified mapping is
	// cached); the answer below is a hit.
	if resp, body := ts.do(t, http.MethodGet, target, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("first GET: status %d, %d bytes", resp.StatusCode, len(body))
	}
	if ps := ts.srv.Store().VerifiedMappings(); ps.Cached == 0 {
		t.Fatalf("verified mappings %+v after a read of a large image, want it cached", ps)
	}
	before := scrapeCounter(t, ts.base, "haybale_store_http_unverified_answers_total")

	conn := dialSmallReceive(t, ts.srv.HTTPAddr().String())
	defer conn.Close()
	c := &countingConn{Conn: conn}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: store\r\n\r\n", target); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(want)) {
		t.Fatalf("status %d, Content-Length %d; want 200, %d", resp.StatusCode, resp.ContentLength, len(want))
	}
	// The answer has begun, and waits for the client, which has read a
	// little of it; now its pages leave the page cache.
	head := make([]byte, 8<<10)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	// What the server has handed to the kernel so far: what the client
	// read, what waits in its receive queue, and what waits in the
	// server's send queue. All of the answer there, no send is left to
	// prove.
	clientQueue, _ := tcpQueues(t, conn.LocalAddr(), conn.RemoteAddr())
	_, serverQueue := tcpQueues(t, conn.RemoteAddr(), conn.LocalAddr())
	queued := c.read + clientQueue + serverQueue
	if queued >= int64(len(want)) {
		t.Skipf("the host's socket buffers took the whole answer at once (%d bytes queued for an image of %d): no send is left to prove", queued, len(want))
	}
	reclaim(t, dir)
	rest, err := io.ReadAll(resp.Body)
	got := append(head, rest...)
	if !bytes.Equal(got, want[:len(got)]) {
		t.Fatalf("the client got %d bytes that are not the image's first ones", len(got))
	}
	if len(got) >= len(want) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("after the image's pages left the page cache mid-answer: %d of %d bytes, then %v; want the answer cut short, then the end of the connection", len(got), len(want), err)
	}
	if n := scrapeCounter(t, ts.base, "haybale_store_http_unverified_answers_total") - before; n != 1 {
		t.Fatalf("%.0f answers counted cut short, want 1", n)
	}
	t.Logf("cut short after %d of %d bytes (%d queued when the pages left)", len(got), len(want), queued)

	// A new request is answered whole: the needle is verified again (or
	// read with a pread).
	if resp, body := ts.do(t, http.MethodGet, target, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("GET after the cut: status %d, %d bytes (want %d)", resp.StatusCode, len(body), len(want))
	}
}

// countingConn counts the bytes read from its connection.
type countingConn struct {
	net.Conn
	read int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read += int64(n)
	return n, err
}

// tcpQueues returns, from /proc/net/tcp, the receive queue (bytes
// received, not yet read) and the send queue (bytes written, not yet
// acknowledged) of this process's IPv4 TCP socket from local to remote.
func tcpQueues(t *testing.T, local, remote net.Addr) (rx, tx int64) {
	t.Helper()
	name := func(a net.Addr) string {
		ta, ok := a.(*net.TCPAddr)
		var ip net.IP
		if ok {
			ip = ta.IP.To4()
		}
		if ip == nil {
			t.Skipf("%v: not an IPv4 TCP address, whose queues /proc/net/tcp shows", a)
		}
		// The address as the kernel prints it: the 32-bit value in the
		// host's byte order, then the port.
		return fmt.Sprintf("%08X:%04X", binary.NativeEndian.Uint32(ip), ta.Port)
	}
	l, r := name(local), name(remote)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skipf("no socket queues to check the test's precondition with: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		// sl local_address rem_address st tx_queue:rx_queue ...
		f := strings.Fields(line)
		if len(f) < 5 || f[1] != l || f[2] != r {
			continue
		}
		txs, rxs, _ := strings.Cut(f[4], ":")
		tx, err1 := strconv.ParseInt(txs, 16, 64)
		rx, err2 := strconv.ParseInt(rxs, 16, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("/proc/net/tcp: %q", line)
		}
		return rx, tx
	}
	t.Fatalf("no socket from %s to %s in /proc/net/tcp", l, r)
	return 0, 0
}

// reclaim does to the volume files under dir what reclaim does to their
// pages: it unmaps them from every mapping of the process
// (MADV_DONTNEED: the volume's own mapping and the needles' verified
// mappings, which leaves the pages in the page cache), then drops them
// from the page cache (POSIX_FADV_DONTNEED).
func reclaim(t *testing.T, dir string) {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]bool{}
	for _, line := range strings.Split(string(maps), "\n") {
		// start-end perms offset dev inode path
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[5], dir) || !strings.HasSuffix(f[5], ".dat") {
			continue
		}
		files[f[5]] = true
		from, to, _ := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(from, 16, 64)
		end, err2 := strconv.ParseUint(to, 16, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("/proc/self/maps: %q", line)
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_DONTNEED); errno != 0 {
			t.Fatalf("madvise %s: %v", line, errno)
		}
	}
	if len(files) == 0 {
		t.Fatalf("no mapping of a volume file under %s", dir)
	}
	for path := range files {
		f, err := os.Open(filepath.Clean(path))
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
}
