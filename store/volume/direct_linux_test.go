package volume

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// directVolume writes photos photos (see osVolume) and reopens the volume
// with a direct-read policy of window slots (and the other options of
// opts), so nothing of it is known to be in the page cache.
func directVolume(t *testing.T, photos, window int, opts Options) (*Volume, string, []*needle.Needle) {
	t.Helper()
	v, dir, all := osVolume(t, photos)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	opts.FS = vfs.Default
	opts.Direct = NewDirectReads(window)
	v, err := Open(context.Background(), dir, 3, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	if st := v.Status(); !st.Direct {
		t.Fatalf("volume on %s does not read direct: %s", dir, st.DirectOff)
	}
	return v, dir, all
}

// mapPages maps, read-only and shared, the pages of [off, off+n) of the
// file at path; the caller unmaps them.
func mapPages(t testing.TB, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := int64(os.Getpagesize())
	lo, hi := off&^(page-1), (off+int64(n)+page-1)&^(page-1)
	m, err := unix.Mmap(int(f.Fd()), lo, int(hi-lo), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// residentPages counts, with mincore on a mapping of its own, the pages of
// [off, off+n) of the file at path in the page cache, and the pages of the
// range.
func residentPages(t testing.TB, path string, off int64, n int) (in, pages int) {
	t.Helper()
	data := mapPages(t, path, off, n)
	defer unix.Munmap(data)
	vec := make([]byte, len(data)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&data[0])), uintptr(len(data)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	for _, v := range vec {
		in += int(v & 1)
	}
	return in, len(vec)
}

// lockRangeInPageCache is lockInPageCache for the pages of [off, off+n) of
// the file at path, until the returned function is called (or the test
// ends): a page a read has just brought in may be evicted before the next
// read that needs it resident.
func lockRangeInPageCache(t testing.TB, path string, off int64, n int) (unlock func()) {
	t.Helper()
	m := mapPages(t, path, off, n)
	err := unix.Mlock(m)
	if err == unix.ENOMEM || err == unix.EPERM {
		// Over the soft RLIMIT_MEMLOCK (64 KiB for many unprivileged
		// users): raise it to the hard limit, which needs no privilege,
		// and try once more.
		var lim unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim) == nil && lim.Cur < lim.Max {
			lim.Cur = lim.Max
			if unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim) == nil {
				err = unix.Mlock(m)
			}
		}
		if err != nil {
			unix.Munmap(m)
			t.Skipf("cannot lock %d bytes of %s in the page cache (%v; RLIMIT_MEMLOCK %s): the test needs its pages to stay resident; run it as root or with a higher `ulimit -l`", len(m), path, err, memlockLimit())
		}
	}
	if err != nil {
		unix.Munmap(m)
		t.Fatalf("locking %d bytes of %s in the page cache: %v", len(m), path, err)
	}
	var once sync.Once
	unlock = func() {
		once.Do(func() {
			unix.Munlock(m)
			unix.Munmap(m)
		})
	}
	t.Cleanup(unlock)
	return unlock
}

// memlockLimit describes RLIMIT_MEMLOCK for a skip message.
func memlockLimit() string {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		return err.Error()
	}
	return fmt.Sprintf("soft %d, hard %d bytes", lim.Cur, lim.Max)
}

// readCold drops the file from the page cache, reads n with ReadRef and
// checks its bytes; it returns the change in the volume's counters and in
// the bytes this process read from storage.
func readCold(t *testing.T, v *Volume, path string, n *needle.Needle, drop bool) (d Status, read int64) {
	t.Helper()
	return measureRead(t, v, path, n, drop, func() (needle.Needle, func(), error) {
		ref, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil)
		return ref.Needle, ref.Release, err
	})
}

// measureRead is readCold with the read made by read, which returns the
// needle and what releases it.
func measureRead(t *testing.T, v *Volume, path string, n *needle.Needle, drop bool, read func() (needle.Needle, func(), error)) (d Status, bytesRead int64) {
	t.Helper()
	if drop {
		dropCache(t, path)
	}
	st0, c0 := v.Status(), readIOCounters(t, path)
	got, release, err := read()
	c1, st1 := readIOCounters(t, path), v.Status()
	if err != nil {
		t.Fatalf("key %x size %v: %v", n.Key, n.Size, err)
	}
	if !bytes.Equal(got.Data, n.Data) || got.ContentType != n.ContentType || got.Cookie != n.Cookie {
		t.Fatalf("key %x size %v: wrong bytes", n.Key, n.Size)
	}
	release()
	d.Preads = st1.Preads - st0.Preads
	d.MappedReads = st1.MappedReads - st0.MappedReads
	d.DirectReads = st1.DirectReads - st0.DirectReads
	d.ColdBufferedReads = st1.ColdBufferedReads - st0.ColdBufferedReads
	return d, c1.readBytes - c0.readBytes
}

// TestDirectColdRead: a needle of MapMin bytes or more not in the page
// cache is read with exactly one pread, from the direct descriptor, reads
// no more than its own pages from storage, and leaves the page cache
// without them; read cold a second time within the window it is read
// buffered and stays in the page cache; a needle in the page cache is
// never read direct; a smaller needle is read buffered, cold or not (its
// residency is not asked).
func TestDirectColdRead(t *testing.T) {
	t.Run("hashed", func(t *testing.T) { testDirectColdRead(t, Options{}) })
	t.Run("pinned", func(t *testing.T) { testDirectColdRead(t, Options{Pins: newPins(t, 1024)}) })
}

func testDirectColdRead(t *testing.T, opts Options) {
	v, dir, all := directVolume(t, 6, 0, opts)
	path := DatPath(dir, 3)
	rand.New(rand.NewPCG(3, 4)).Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	var read, span int64
	var large []*needle.Needle
	for _, n := range all {
		e, _ := v.Locate(n.Key, n.Size)
		if e.Length < MapMin {
			d, _ := readCold(t, v, path, n, true)
			if d.Preads != 1 || d.DirectReads != 0 || d.ColdBufferedReads != 0 {
				t.Fatalf("cold key %x size %v (%d bytes, under MapMin): %d preads, %d direct, %d cold buffered; want one buffered pread",
					n.Key, n.Size, e.Length, d.Preads, d.DirectReads, d.ColdBufferedReads)
			}
			if in, pages := residentPages(t, path, e.Offset, e.Length); in != pages {
				t.Fatalf("cold key %x size %v (under MapMin): %d of its %d pages in the page cache after a buffered read", n.Key, n.Size, in, pages)
			}
			continue
		}
		large = append(large, n)
		d, got := readCold(t, v, path, n, true)
		if d.Preads != 1 || d.DirectReads != 1 || d.MappedReads != 0 || d.ColdBufferedReads != 0 {
			t.Fatalf("cold key %x size %v (%d bytes): %d preads, %d direct, %d mapped, %d cold buffered; want one direct pread",
				n.Key, n.Size, e.Length, d.Preads, d.DirectReads, d.MappedReads, d.ColdBufferedReads)
		}
		if in, _ := residentPages(t, path, e.Offset, e.Length); in != 0 {
			t.Fatalf("cold key %x size %v: %d of its pages in the page cache after a direct read, want none", n.Key, n.Size, in)
		}
		if got > pageSpan(e.Offset, e.Length)+metadataSlack {
			t.Errorf("cold key %x size %v: %d bytes read from storage for a needle on %d bytes of pages", n.Key, n.Size, got, pageSpan(e.Offset, e.Length))
		}
		read += got
		span += pageSpan(e.Offset, e.Length)
	}
	t.Logf("direct: %d bytes read from storage for %d bytes of needle pages", read, span)
	if len(large) == 0 || len(large) == len(all) {
		t.Fatalf("%d of %d needles of MapMin bytes or more: want some of each", len(large), len(all))
	}

	// The second cold read of each, within the window: buffered, and then
	// resident.
	for _, n := range large {
		e, _ := v.Locate(n.Key, n.Size)
		d, _ := readCold(t, v, path, n, true)
		if d.Preads != 1 || d.DirectReads != 0 || d.ColdBufferedReads != 1 {
			t.Fatalf("second cold read of key %x size %v: %d preads, %d direct, %d cold buffered; want one buffered pread",
				n.Key, n.Size, d.Preads, d.DirectReads, d.ColdBufferedReads)
		}
		if in, pages := residentPages(t, path, e.Offset, e.Length); in != pages {
			t.Fatalf("second cold read of key %x size %v: %d of its %d pages in the page cache, want all", n.Key, n.Size, in, pages)
		}
		// Resident now (its pages locked there): never direct, never
		// counted cold.
		unlock := lockRangeInPageCache(t, path, e.Offset, e.Length)
		d, _ = readCold(t, v, path, n, false)
		unlock()
		if d.DirectReads != 0 || d.ColdBufferedReads != 0 || d.Preads+d.MappedReads != 1 {
			t.Fatalf("resident key %x size %v: %d direct, %d cold buffered, %d preads, %d mapped", n.Key, n.Size, d.DirectReads, d.ColdBufferedReads, d.Preads, d.MappedReads)
		}
	}

	// The whole file resident (locked there): no read goes direct.
	lockInPageCache(t, path)
	st0 := v.Status()
	for _, n := range all {
		readCold(t, v, path, n, false)
	}
	if st := v.Status(); st.DirectReads != st0.DirectReads || st.ColdBufferedReads != st0.ColdBufferedReads {
		t.Fatalf("resident file: %d direct and %d cold buffered reads, want none", st.DirectReads-st0.DirectReads, st.ColdBufferedReads-st0.ColdBufferedReads)
	}
}

// TestDirectReadPlacement: direct reads return the needle's bytes exactly,
// verified, wherever it lies: not aligned at either end, at the very tail
// of a file whose size is not a multiple of the alignment, into a pooled
// buffer whose start is not aligned; and after a compaction, from the new
// file.
func TestDirectReadPlacement(t *testing.T) {
	v, dir, all := directVolume(t, 4, 0, Options{})
	path := DatPath(dir, 3)
	var unaligned, tail *needle.Needle
	var tailEnd int64
	var large []*needle.Needle
	for _, n := range all {
		e, _ := v.Locate(n.Key, n.Size)
		if e.Length >= MapMin {
			large = append(large, n)
		}
		if e.Length >= MapMin && e.Offset%vfs.DirectAlign != 0 && (e.Offset+int64(e.Length))%vfs.DirectAlign != 0 && unaligned == nil {
			unaligned = n
		}
		if end := e.Offset + int64(e.Length); end > tailEnd {
			tail, tailEnd = n, end
		}
	}
	if unaligned == nil {
		t.Fatal("no needle unaligned at both ends")
	}
	if size := v.Status().Size; size != tailEnd || size%vfs.DirectAlign == 0 || needle.EncodedLen(len(tail.Data)) < MapMin {
		t.Fatalf("file of %d bytes, last needle ending at %d (%d bytes): want a large needle at the tail, the size unaligned", size, tailEnd, len(tail.Data))
	}
	for _, n := range []*needle.Needle{unaligned, tail} {
		if d, _ := readCold(t, v, path, n, true); d.DirectReads != 1 {
			t.Fatalf("key %x size %v: %d direct reads, want 1", n.Key, n.Size, d.DirectReads)
		}
	}

	// A pooled buffer starting 8 bytes past an aligned address, with room
	// for the range after its first aligned address: used as it is.
	n := large[len(large)/2]
	e, _ := v.Locate(n.Key, n.Size)
	pool := make([]byte, e.Length+3*vfs.DirectAlign)
	pool = pool[8+alignGap(pool):]
	dropCache(t, path)
	ref, buf, err := v.ReadRef(n.Key, n.Cookie, n.Size, pool[:0])
	if err != nil || !bytes.Equal(ref.Needle.Data, n.Data) {
		t.Fatalf("key %x size %v into a pooled buffer: %v (bytes equal %v)", n.Key, n.Size, err, err == nil && bytes.Equal(ref.Needle.Data, n.Data))
	}
	if unsafe.SliceData(buf) != unsafe.SliceData(pool) {
		t.Fatal("a pooled buffer with room for the aligned range was not used")
	}
	if v.Status().DirectReads != 3 {
		t.Fatalf("%d direct reads, want 3", v.Status().DirectReads)
	}

	// A compaction swaps in a new file: it is read direct too.
	if _, err := v.Compact(context.Background(), CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	if !v.Status().Direct {
		t.Fatalf("after compaction: not direct: %s", v.Status().DirectOff)
	}
	for _, n := range large {
		if n == unaligned || n == tail || n == large[len(large)/2] {
			continue // read direct before, within the window: buffered now
		}
		if d, _ := readCold(t, v, path, n, true); d.DirectReads != 1 {
			t.Fatalf("after compaction, key %x size %v: %d direct reads, want 1", n.Key, n.Size, d.DirectReads)
		}
	}
}

// TestDirectReadDetectsDamage: a flipped byte of a needle's data, header or
// footer on the disk answers corrupt from a direct read, as from a
// buffered one.
func TestDirectReadDetectsDamage(t *testing.T) {
	v, dir, all := directVolume(t, 2, 0, Options{})
	path := DatPath(dir, 3)
	var large []*needle.Needle
	for _, n := range all {
		if needle.EncodedLen(len(n.Data)) >= MapMin {
			large = append(large, n)
		}
	}
	for i, where := range []string{"header", "data", "footer"} {
		n := large[i]
		e, _ := v.Locate(n.Key, n.Size)
		at := e.Offset + 2 // the magic
		switch where {
		case "data":
			at = e.Offset + needle.HeaderSize + int64(len(n.Data)/2)
		case "footer":
			at = e.Offset + needle.HeaderSize + int64(len(n.Data)) + 1 // the footer's magic or checksum
		}
		flipByte(t, path, at)
		dropCache(t, path)
		st0 := v.Status()
		_, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil)
		if !IsCorruption(err) {
			t.Fatalf("%s damaged: %v, want corruption", where, err)
		}
		if d := v.Status().DirectReads - st0.DirectReads; d != 1 {
			t.Fatalf("%s damaged: %d direct reads, want 1", where, d)
		}
	}
}

// TestDirectRefused: where the file system refuses O_DIRECT the volume
// says why and reads buffered, correctly; on a file system that cannot be
// mapped (MemFS) too; on tmpfs (memory only), needles are never cold.
func TestDirectRefused(t *testing.T) {
	t.Run("EINVAL", func(t *testing.T) {
		v, dir, all := osVolume(t, 2)
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
		orig := openDirect
		openDirect = func(vfs.File) (vfs.File, error) {
			return nil, &os.PathError{Op: "open O_DIRECT", Path: DatPath(dir, 3), Err: syscall.EINVAL}
		}
		defer func() { openDirect = orig }()
		v, err := Open(context.Background(), dir, 3, Options{Direct: NewDirectReads(0)})
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		st := v.Status()
		if st.Direct || !strings.Contains(st.DirectOff, "invalid argument") || !st.Mapped {
			t.Fatalf("refused: direct %v (%q), mapped %v; want buffered, saying why, mapped", st.Direct, st.DirectOff, st.Mapped)
		}
		path := DatPath(dir, 3)
		for _, n := range all {
			e, _ := v.Locate(n.Key, n.Size)
			d, _ := readCold(t, v, path, n, true)
			if d.Preads != 1 || d.DirectReads != 0 || d.ColdBufferedReads != 0 {
				t.Fatalf("key %x size %v: %d preads, %d direct, %d cold buffered; want one buffered pread", n.Key, n.Size, d.Preads, d.DirectReads, d.ColdBufferedReads)
			}
			if in, pages := residentPages(t, path, e.Offset, e.Length); in != pages {
				t.Fatalf("key %x size %v: %d of %d pages resident after a buffered read", n.Key, n.Size, in, pages)
			}
		}
	})
	t.Run("MemFS", func(t *testing.T) {
		v := create(t, memFS(t), 4, Options{Direct: NewDirectReads(0)})
		defer v.Close()
		ns := photo(5, 6)
		mustWrite(t, v, ns)
		if st := v.Status(); st.Direct || st.DirectOff == "" {
			t.Fatalf("MemFS: direct %v (%q), want buffered, saying why", st.Direct, st.DirectOff)
		}
		for _, n := range ns {
			ref := readRef(t, v, n)
			ref.Release()
		}
	})
	t.Run("tmpfs", func(t *testing.T) {
		if _, err := os.Stat("/dev/shm"); err != nil {
			t.Skip("no /dev/shm")
		}
		dir, err := os.MkdirTemp("/dev/shm", "volume-direct")
		if err != nil {
			t.Skip(err)
		}
		defer os.RemoveAll(dir)
		v, err := Create(context.Background(), dir, 5, Options{Direct: NewDirectReads(0)})
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		ns := photo(7, 8)
		mustWrite(t, v, ns)
		for _, n := range ns {
			ref := readRef(t, v, n)
			ref.Release()
		}
		st := v.Status()
		t.Logf("tmpfs: direct %v %s", st.Direct, st.DirectOff)
		if st.DirectReads != 0 || st.ColdBufferedReads != 0 {
			t.Fatalf("tmpfs: %d direct and %d cold reads of needles in memory", st.DirectReads, st.ColdBufferedReads)
		}
	})
}

// TestDirectReadsWindow: the policy sends a needle direct, then buffered
// when it comes back within the window, then direct again; a needle pushed
// out of the window by others comes back direct.
func TestDirectReadsWindow(t *testing.T) {
	d := NewDirectReads(1000)
	if d.Window() != 1024 {
		t.Fatalf("window %d, want 1024", d.Window())
	}
	for i, want := range []bool{true, false, true, false} {
		if got := d.direct(1, 42, needle.SizeThumb); got != want {
			t.Fatalf("read %d: direct %v, want %v", i, got, want)
		}
	}
	if !d.direct(2, 42, needle.SizeThumb) || !d.direct(1, 42, needle.SizeSmall) {
		t.Fatal("another volume or size of the same key is another needle")
	}
	one := NewDirectReads(1)
	one.direct(1, 1, needle.SizeThumb)
	one.direct(1, 2, needle.SizeThumb) // takes the only slot
	if !one.direct(1, 1, needle.SizeThumb) {
		t.Fatal("a needle pushed out of the window was read buffered")
	}
}

// TestDirectBuffer: the buffer of a direct read holds the range from an
// aligned address, reusing the caller's when it has the room.
func TestDirectBuffer(t *testing.T) {
	for _, span := range []int{4096, 8192, 40960, 401408} {
		b, at := directBuffer(nil, span)
		if len(b) != at+span || alignGap(b[at:]) != 0 {
			t.Fatalf("span %d: len %d, at %d, gap %d", span, len(b), at, alignGap(b[at:]))
		}
		small := make([]byte, 100)
		if b, _ := directBuffer(small, span); unsafe.SliceData(b) == unsafe.SliceData(small) {
			t.Fatalf("span %d: a 100-byte buffer was used", span)
		}
		big := make([]byte, span+2*vfs.DirectAlign)
		odd := big[1:1]
		b, at = directBuffer(odd, span)
		if unsafe.SliceData(b) != unsafe.SliceData(odd) || alignGap(b[at:]) != 0 || len(b) != at+span {
			t.Fatalf("span %d: the caller's buffer with room was not used as it is", span)
		}
	}
}

// TestDirectReadBufferPool: a cold needle is read through a buffer of the
// pool, which is then free again; with every buffer of the pool taken, or
// for a needle larger than a buffer, the read goes straight into the
// caller's buffer, aligned; the bytes are the needle's either way.
func TestDirectReadBufferPool(t *testing.T) {
	v, dir, all := directVolume(t, 3, 0, Options{})
	path := DatPath(dir, 3)
	pool := v.opts.Direct.bufs
	var large []*needle.Needle
	for _, n := range all {
		if needle.EncodedLen(len(n.Data)) >= MapMin {
			large = append(large, n)
		}
	}
	readCold(t, v, path, large[0], true)
	pool.mu.Lock()
	slabs, free := len(pool.slabs), len(pool.free)
	pool.mu.Unlock()
	if slabs != 1 || free != directSlab/directSlot {
		t.Fatalf("after one direct read: %d regions, %d free buffers; want 1 and %d", slabs, free, directSlab/directSlot)
	}

	// Every buffer taken: the read goes into the caller's buffer.
	var taken [][]byte
	for b := pool.get(); b != nil; b = pool.get() {
		taken = append(taken, b)
	}
	if len(taken) != DirectBufferBytes/directSlot {
		t.Fatalf("%d buffers in the pool, want %d", len(taken), DirectBufferBytes/directSlot)
	}
	for _, n := range large[1:4] {
		if d, _ := readCold(t, v, path, n, true); d.DirectReads != 1 {
			t.Fatalf("pool empty, key %x size %v: %d direct reads, want 1", n.Key, n.Size, d.DirectReads)
		}
	}
	for _, b := range taken {
		pool.put(b)
	}

	// A needle larger than a buffer of the pool.
	big := &needle.Needle{Key: 99, Cookie: 5, Size: needle.SizeLarge, ContentType: needle.TypeJPEG, Data: make([]byte, directSlot+5000)}
	for i := range big.Data {
		big.Data[i] = byte(i*13 + i>>9)
	}
	mustWrite(t, v, []*needle.Needle{big})
	if d, _ := readCold(t, v, path, big, true); d.DirectReads != 1 {
		t.Fatalf("needle of %d bytes: %d direct reads, want 1", len(big.Data), d.DirectReads)
	}
	if b, _ := os.ReadFile("/proc/self/smaps_rollup"); len(b) > 0 {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "AnonHugePages:") {
				t.Logf("process: %s", l)
			}
		}
	}
}

// BenchmarkDirectReadMemory reads a large file (HAYBALE_DIRECT_FILE, e.g. a
// volume of the benchmark corpus; skipped without it), dropped from the
// page cache first, in 144 KiB ranges in a random order, each once, from 16
// goroutines, three ways: buffered (POSIX_FADV_RANDOM, as the volume's read
// descriptor), direct into ordinary aligned buffers, and direct into
// buffers of the huge-page pool; it reports reads/s and MB/s. Run:
// HAYBALE_DIRECT_FILE=/tmp/serve-quiet/data/2.dat go test -run XXX -bench DirectReadMemory -benchtime 1x ./store/volume/
func BenchmarkDirectReadMemory(b *testing.B) {
	path := os.Getenv("HAYBALE_DIRECT_FILE")
	if path == "" {
		b.Skip("HAYBALE_DIRECT_FILE names no file to read")
	}
	const span, readers = 144 << 10, 16
	for _, mode := range []string{"buffered", "direct", "direct-hugepages"} {
		b.Run(mode, func(b *testing.B) {
			for b.Loop() {
				f, err := vfs.Default.Open(path)
				if err != nil {
					b.Fatal(err)
				}
				osf, _ := vfs.OSFile(f)
				if err := unix.Fadvise(int(osf.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
					b.Fatal(err)
				}
				if err := unix.Fadvise(int(osf.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
					b.Fatal(err)
				}
				var r vfs.File = f
				if mode != "buffered" {
					if r, err = vfs.OpenDirect(f); err != nil {
						b.Fatal(err)
					}
				}
				size, _ := f.Size()
				order := rand.Perm(int(size / span))
				pool := &directBufs{maxSlabs: readers * directSlot / directSlab}
				var next atomic.Int64
				var wg sync.WaitGroup
				start := time.Now()
				for range readers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						var buf []byte
						switch mode {
						case "direct-hugepages":
							buf = pool.get()[:span]
						default:
							buf, _ = directBuffer(nil, span)
							buf = buf[alignGap(buf):]
						}
						for {
							i := next.Add(1) - 1
							if int(i) >= len(order) {
								return
							}
							if _, err := r.ReadAt(buf, int64(order[i])*span); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				el := time.Since(start)
				pool.unmapAll()
				if r != f {
					r.Close()
				}
				f.Close()
				b.ReportMetric(float64(len(order))/el.Seconds(), "reads/s")
				b.ReportMetric(float64(len(order))*span/1e6/el.Seconds(), "MB/s")
			}
		})
	}
}

// poolState returns how many buffers the pool has mapped, how many are
// free, and how many are lent.
func poolState(p *directBufs) (mapped, free, lent int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.slabs) * (directSlab / directSlot), len(p.free), int(p.lent.Load())
}

// TestDirectReadLends: a cold needle read direct is verified in the pool's
// buffer, which the Ref is lent (no copy into the caller's buffer, which is
// returned as it was) until Release gives it back, once; with half the
// pool lent, a read copies out and lends nothing; a read that fails
// (corrupt, a wrong cookie, a file shorter than the index says) gives its
// buffer back.
func TestDirectReadLends(t *testing.T) {
	v, dir, all := directVolume(t, 8, 0, Options{})
	path := DatPath(dir, 3)
	pool := v.opts.Direct.bufs
	var large []*needle.Needle
	for _, n := range all {
		if needle.EncodedLen(len(n.Data)) >= MapMin {
			large = append(large, n)
		}
	}
	if len(large) < 6 {
		t.Fatalf("%d needles of MapMin bytes or more, want 6", len(large))
	}

	dropCache(t, path)
	caller := make([]byte, 0, 64)
	ref, buf, err := v.ReadRef(large[0].Key, large[0].Cookie, large[0].Size, caller)
	if err != nil {
		t.Fatal(err)
	}
	if !ref.Lent() || ref.Mapped() || !bytes.Equal(ref.Needle.Data, large[0].Data) {
		t.Fatalf("cold direct read: lent %v, mapped %v, bytes equal %v; want lent, the needle's bytes", ref.Lent(), ref.Mapped(), bytes.Equal(ref.Needle.Data, large[0].Data))
	}
	if unsafe.SliceData(buf) != unsafe.SliceData(caller) || cap(buf) != cap(caller) {
		t.Fatal("a lent read grew or replaced the caller's buffer")
	}
	if _, _, ok := ref.Source(); ok {
		t.Fatal("a lent Ref gave a file source")
	}
	if mapped, free, lent := poolState(pool); lent != 1 || free != mapped-1 {
		t.Fatalf("one Ref lent: %d of %d buffers free, %d lent; want all but one free, 1 lent", free, mapped, lent)
	}
	ref.Release()
	ref.Release() // twice: nothing more
	if mapped, free, lent := poolState(pool); lent != 0 || free != mapped {
		t.Fatalf("after Release: %d of %d buffers free, %d lent; want all free, none lent", free, mapped, lent)
	}

	// Half the pool lent: the next cold read copies out into the caller's
	// buffer and gives its pool buffer back at once.
	pool.lent.Store(pool.maxLent)
	d, _ := readCold(t, v, path, large[1], true)
	if d.DirectReads != 1 {
		t.Fatalf("half the pool lent: %d direct reads, want 1", d.DirectReads)
	}
	ref, buf, err = v.ReadRef(large[2].Key, large[2].Cookie, large[2].Size, nil)
	if err != nil || ref.Lent() || !bytes.Equal(ref.Needle.Data, large[2].Data) || len(buf) < len(large[2].Data) {
		t.Fatalf("half the pool lent: err %v, lent %v; want the needle copied into the caller's buffer", err, ref.Lent())
	}
	ref.Release()
	if mapped, free, lent := poolState(pool); int32(lent) != pool.maxLent || free != mapped {
		t.Fatalf("half the pool lent, after a copied read: %d of %d free, %d lent; want all free, %d lent", free, mapped, lent, pool.maxLent)
	}
	pool.lent.Store(0)

	// A wrong cookie: not found, the buffer back.
	dropCache(t, path)
	if _, _, err := v.ReadRef(large[3].Key, large[3].Cookie+1, large[3].Size, nil); err != ErrNotFound {
		t.Fatalf("wrong cookie: %v, want ErrNotFound", err)
	}
	if mapped, free, lent := poolState(pool); lent != 0 || free != mapped {
		t.Fatalf("wrong cookie: %d of %d free, %d lent", free, mapped, lent)
	}

	// Damage: corrupt, the buffer back.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e, _ := v.Locate(large[4].Key, large[4].Size)
	flipByte(t, path, e.Offset+needle.HeaderSize+int64(len(large[4].Data)/3))
	dropCache(t, path)
	st0 := v.Status()
	if ref, _, err := v.ReadRef(large[4].Key, large[4].Cookie, large[4].Size, nil); !IsCorruption(err) || ref.Lent() {
		t.Fatalf("damaged: %v (lent %v), want corruption", err, ref.Lent())
	}
	if d := v.Status().DirectReads - st0.DirectReads; d != 1 {
		t.Fatalf("damaged: %d direct reads, want 1", d)
	}
	if mapped, free, lent := poolState(pool); lent != 0 || free != mapped {
		t.Fatalf("damaged: %d of %d free, %d lent", free, mapped, lent)
	}

	// The file cut short under the index: corrupt (a short read), the
	// buffer back.
	var last *needle.Needle
	var lastOff int64 = -1
	for _, n := range large {
		if e, _ := v.Locate(n.Key, n.Size); e.Offset > lastOff && n != large[4] {
			last, lastOff = n, e.Offset
		}
	}
	if err := f.Truncate(lastOff + needle.HeaderSize + 100); err != nil {
		t.Fatal(err)
	}
	dropCache(t, path)
	if ref, _, err := v.ReadRef(last.Key, last.Cookie, last.Size, nil); !IsCorruption(err) || ref.Lent() {
		t.Fatalf("short file: %v (lent %v), want corruption", err, ref.Lent())
	}
	if mapped, free, lent := poolState(pool); lent != 0 || free != mapped {
		t.Fatalf("short file: %d of %d free, %d lent", free, mapped, lent)
	}
}

// TestDirectReadLendsConcurrently: many readers of cold needles, each
// holding its Ref a while, get the needles' bytes, and every buffer is
// back once every Ref is released (run with -race).
func TestDirectReadLendsConcurrently(t *testing.T) {
	v, dir, all := directVolume(t, 8, 1, Options{}) // a window of one: most reads go direct
	path := DatPath(dir, 3)
	var large []*needle.Needle
	for _, n := range all {
		if needle.EncodedLen(len(n.Data)) >= MapMin {
			large = append(large, n)
		}
	}
	var wg sync.WaitGroup
	var lentReads atomic.Int64
	errs := make(chan error, 64)
	for round := 0; round < 4; round++ {
		dropCache(t, path)
		for g := 0; g < 24; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				n := large[g%len(large)]
				ref, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil)
				if err != nil {
					errs <- err
					return
				}
				if ref.Lent() {
					lentReads.Add(1)
				}
				if !bytes.Equal(ref.Needle.Data, n.Data) {
					errs <- ErrNotFound
				}
				time.Sleep(time.Millisecond)
				ref.Release()
			}(g)
		}
		wg.Wait()
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if lentReads.Load() == 0 {
		t.Fatal("no read was lent its buffer")
	}
	if mapped, free, lent := poolState(v.opts.Direct.bufs); lent != 0 || free != mapped {
		t.Fatalf("after every Release: %d of %d free, %d lent", free, mapped, lent)
	}
}

// readColdPlain is readCold through Read, the net/http and gRPC path.
func readColdPlain(t *testing.T, v *Volume, path string, n *needle.Needle, drop bool) (d Status, read int64) {
	t.Helper()
	return measureRead(t, v, path, n, drop, func() (needle.Needle, func(), error) {
		got, _, err := v.Read(n.Key, n.Cookie, n.Size, nil)
		return got, func() {}, err
	})
}

// TestDirectColdReadPlain: Read takes the cold policy of ReadRef: a cold
// needle of MapMin bytes or more is read with one direct pread of no more
// than its pages, which stay out of the page cache; read cold again within
// the window, buffered, and then resident; resident, or under MapMin, one
// buffered pread. Nothing of the pool stays taken. Damage answers corrupt.
func TestDirectColdReadPlain(t *testing.T) {
	v, dir, all := directVolume(t, 6, 0, Options{})
	path := DatPath(dir, 3)
	pool := v.opts.Direct.bufs
	var large []*needle.Needle
	for _, n := range all {
		e, _ := v.Locate(n.Key, n.Size)
		if e.Length < MapMin {
			d, _ := readColdPlain(t, v, path, n, true)
			if d.Preads != 1 || d.DirectReads != 0 || d.ColdBufferedReads != 0 {
				t.Fatalf("cold key %x size %v (under MapMin): %d preads, %d direct, %d cold buffered; want one buffered pread", n.Key, n.Size, d.Preads, d.DirectReads, d.ColdBufferedReads)
			}
			continue
		}
		large = append(large, n)
		d, got := readColdPlain(t, v, path, n, true)
		if d.Preads != 1 || d.DirectReads != 1 || d.ColdBufferedReads != 0 || d.MappedReads != 0 {
			t.Fatalf("cold key %x size %v: %d preads, %d direct, %d cold buffered, %d mapped; want one direct pread", n.Key, n.Size, d.Preads, d.DirectReads, d.ColdBufferedReads, d.MappedReads)
		}
		if in, _ := residentPages(t, path, e.Offset, e.Length); in != 0 {
			t.Fatalf("cold key %x size %v: %d pages resident after a direct Read, want none", n.Key, n.Size, in)
		}
		if got > pageSpan(e.Offset, e.Length)+metadataSlack {
			t.Errorf("cold key %x size %v: %d bytes read from storage for %d bytes of pages", n.Key, n.Size, got, pageSpan(e.Offset, e.Length))
		}
	}
	if len(large) == 0 {
		t.Fatal("no needle of MapMin bytes or more")
	}
	if mapped, free, lent := poolState(pool); lent != 0 || free != mapped {
		t.Fatalf("after direct Reads: %d of %d buffers free, %d lent", free, mapped, lent)
	}
	for _, n := range large {
		e, _ := v.Locate(n.Key, n.Size)
		d, _ := readColdPlain(t, v, path, n, true)
		if d.Preads != 1 || d.DirectReads != 0 || d.ColdBufferedReads != 1 {
			t.Fatalf("second cold Read of key %x size %v: %d preads, %d direct, %d cold buffered; want one buffered", n.Key, n.Size, d.Preads, d.DirectReads, d.ColdBufferedReads)
		}
		if in, pages := residentPages(t, path, e.Offset, e.Length); in != pages {
			t.Fatalf("second cold Read of key %x size %v: %d of %d pages resident, want all", n.Key, n.Size, in, pages)
		}
		unlock := lockRangeInPageCache(t, path, e.Offset, e.Length)
		d, _ = readColdPlain(t, v, path, n, false)
		unlock()
		if d.Preads != 1 || d.DirectReads != 0 || d.ColdBufferedReads != 0 {
			t.Fatalf("resident key %x size %v: %d preads, %d direct, %d cold buffered; want one buffered pread", n.Key, n.Size, d.Preads, d.DirectReads, d.ColdBufferedReads)
		}
	}

	// Damage: corrupt from a direct Read.
	n := large[len(large)-1]
	e, _ := v.Locate(n.Key, n.Size)
	flipByte(t, path, e.Offset+needle.HeaderSize+int64(len(n.Data)/2))
	dropCache(t, path)
	// Its second cold read above took it out of the policy's window: the
	// next cold read goes direct, the one after buffered; both see the
	// damage.
	for _, want := range []int64{1, 0} {
		dropCache(t, path)
		st0 := v.Status()
		if _, _, err := v.Read(n.Key, n.Cookie, n.Size, nil); !IsCorruption(err) {
			t.Fatalf("damaged: %v, want corruption", err)
		}
		if d := v.Status().DirectReads - st0.DirectReads; d != want {
			t.Fatalf("damaged: %d direct reads, want %d", d, want)
		}
	}
	if mapped, free, lent := poolState(pool); lent != 0 || free != mapped {
		t.Fatalf("after a damaged direct Read: %d of %d buffers free, %d lent", free, mapped, lent)
	}
}

// TestColdBufferedReadThroughRing: a needle read through the page cache
// whose pages are not all there (a needle under MapMin, cold) waits for
// the disk through the process's io_uring, blocking no thread: at most one
// read through the ring (none when the pages arrive within the RWF_NOWAIT
// try), one pread counted, its own pages and no more read from
// storage; resident, it is copied at once, nothing through the ring.
func TestColdBufferedReadThroughRing(t *testing.T) {
	if on, why := vfs.RingStatus(); !on {
		t.Skip(why)
	}
	v, dir, all := osVolume(t, 3)
	path := DatPath(dir, 3)
	small, throughRing := 0, 0
	for _, n := range all {
		e, _ := v.Locate(n.Key, n.Size)
		if e.Length >= MapMin {
			continue
		}
		small++
		dropCache(t, path)
		r0 := vfs.RingReads()
		d, got := readCold(t, v, path, n, false)
		// The RWF_NOWAIT try starts the disk read, and on a fast device
		// the pages can be in before the kernel looks again: then the try
		// itself answers and nothing goes through the ring. Either way one
		// pread, and the needle's pages read once (below).
		r := vfs.RingReads() - r0
		if r > 1 || d.Preads != 1 {
			t.Fatalf("cold key %x size %v: %d reads through the ring, %d preads; want at most 1 and 1", n.Key, n.Size, r, d.Preads)
		}
		throughRing += int(r)
		if got > pageSpan(e.Offset, e.Length)+metadataSlack {
			t.Errorf("cold key %x size %v: %d bytes read from storage for %d bytes of pages", n.Key, n.Size, got, pageSpan(e.Offset, e.Length))
		}
		r0 = vfs.RingReads()
		if d, got := readCold(t, v, path, n, false); vfs.RingReads() != r0 || d.Preads != 1 || got != 0 {
			t.Fatalf("resident key %x size %v: %d reads through the ring, %d preads, %d bytes from storage; want none, 1, none", n.Key, n.Size, vfs.RingReads()-r0, d.Preads, got)
		}
	}
	if small == 0 {
		t.Fatal("no needle under MapMin")
	}
	t.Logf("%d of %d cold reads waited through the ring", throughRing, small)
}
