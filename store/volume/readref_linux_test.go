package volume

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// osVolume creates volume vid on the operating system's file system in a
// fresh directory and writes photos of the four bench sizes (5, 30, 120
// and 400 KB, varied), with random bytes; it returns the needles written.
func osVolume(t testing.TB, photos int) (*Volume, string, []*needle.Needle) {
	t.Helper()
	return osVolumeWith(t, photos, Options{FS: vfs.Default})
}

// osVolumeWith is osVolume with the volume's options.
func osVolumeWith(t testing.TB, photos int, opts Options) (*Volume, string, []*needle.Needle) {
	t.Helper()
	dir := t.TempDir()
	v, err := Create(context.Background(), dir, 3, opts)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(7, 8))
	var all []*needle.Needle
	for k := uint64(1); k <= uint64(photos); k++ {
		var ns []*needle.Needle
		for i, s := range benchPhotoSizes {
			data := make([]byte, s-int(r.Uint64N(uint64(s/10))))
			for j := range data {
				data[j] = byte(r.Uint32())
			}
			ns = append(ns, &needle.Needle{Key: k, Cookie: k * 31, Size: needle.SizeCode(i), ContentType: needle.TypeJPEG, Data: data})
		}
		if _, err := v.Write(context.Background(), ns); err != nil {
			t.Fatal(err)
		}
		all = append(all, ns...)
	}
	return v, dir, all
}

// readRef reads want with ReadRef and checks its bytes; it returns the Ref
// (not released).
func readRef(t testing.TB, v *Volume, want *needle.Needle) Ref {
	t.Helper()
	ref, _, err := v.ReadRef(want.Key, want.Cookie, want.Size, nil)
	if err != nil {
		t.Fatalf("read key %x size %v: %v", want.Key, want.Size, err)
	}
	if !bytes.Equal(ref.Needle.Data, want.Data) || ref.Needle.ContentType != want.ContentType {
		t.Fatalf("read key %x size %v: wrong bytes (mapped %v)", want.Key, want.Size, ref.Mapped())
	}
	return ref
}

// TestReadRefMapped: with verified mappings, needles of PinMin bytes or
// more in the page cache are served from the mapping, verified, with no
// pread, and prove their bytes (StillVerified); the descriptor and offset
// a server sends from hold exactly the needle's data. Without verified
// mappings every needle, resident or not, is read into the buffer with
// one pread: nothing would prove mapped bytes at send time. Misses and
// wrong cookies are not found.
func TestReadRefMapped(t *testing.T) {
	t.Run("pinned", func(t *testing.T) { testReadRefMapped(t, Options{FS: vfs.Default, Pins: newPins(t, 64)}) })
	t.Run("without-pins", func(t *testing.T) { testReadRefMapped(t, Options{FS: vfs.Default}) })
}

func testReadRefMapped(t *testing.T, opts Options) {
	v, dir, all := osVolumeWith(t, 3, opts)
	defer v.Close()
	lockInPageCache(t, DatPath(dir, 3)) // just written is not enough to stay resident
	if !v.Status().Mapped {
		t.Fatal("a volume on the OS file system is not mapped")
	}
	small := 0
	for _, n := range all {
		ref := readRef(t, v, n)
		if !ref.StillVerified() {
			t.Fatalf("key %x size %v: just read (mapped %v), yet not still verified", n.Key, n.Size, ref.Mapped())
		}
		if opts.Pins == nil || needle.EncodedLen(len(n.Data)) < PinMin {
			small++
			if ref.Mapped() {
				t.Fatalf("key %x size %v: %d bytes, mapped without a verified mapping", n.Key, n.Size, len(n.Data))
			}
			if _, _, ok := ref.Source(); ok {
				t.Fatal("a buffered Ref has a source")
			}
			ref.Release()
			continue
		}
		if !ref.Mapped() {
			t.Fatalf("key %x size %v: just written (in the page cache) but read with a pread", n.Key, n.Size)
		}
		fd, off, ok := ref.Source()
		if !ok {
			t.Fatal("a mapped Ref has no source")
		}
		got := make([]byte, len(n.Data))
		if _, err := syscall.Pread(fd, got, off); err != nil || !bytes.Equal(got, n.Data) {
			t.Fatalf("key %x size %v: the source at %d does not hold the needle's data (%v)", n.Key, n.Size, off, err)
		}
		ref.Release()
		ref.Release() // a second release does nothing
	}
	st := v.Status()
	if opts.Pins == nil && small != len(all) || st.MappedReads != int64(len(all)-small) || st.Preads != int64(small) {
		t.Fatalf("status: %d mapped reads and %d preads, want %d and %d", st.MappedReads, st.Preads, len(all)-small, small)
	}
	if opts.Pins != nil {
		if ps := opts.Pins.Stats(); ps.Live != int64(len(all)-small) {
			t.Fatalf("pins %+v after every Ref was released twice, want %d live (the cached ones)", ps, len(all)-small)
		}
	}
	if _, _, err := v.ReadRef(all[0].Key, all[0].Cookie+1, all[0].Size, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("wrong cookie: %v, want ErrNotFound", err)
	}
	if _, _, err := v.ReadRef(999, 1, needle.SizeThumb, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing key: %v, want ErrNotFound", err)
	}
}

// TestReadRefDetectsDamage: a flipped byte in the data, the header or the
// footer of a needle in the page cache is caught by the mapped read (the
// first verification of its verified mapping).
func TestReadRefDetectsDamage(t *testing.T) {
	v, dir, all := osVolumeWith(t, 2, Options{FS: vfs.Default, Pins: newPins(t, 64)})
	defer v.Close()
	lockInPageCache(t, DatPath(dir, 3)) // just written is not enough to stay resident
	f, err := os.OpenFile(DatPath(dir, 3), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, at := range []func(e Entry, n *needle.Needle) int64{
		func(e Entry, _ *needle.Needle) int64 { return e.Offset + needle.HeaderSize + 100 }, // data
		func(e Entry, _ *needle.Needle) int64 { return e.Offset + 1 },                       // header magic
		func(e Entry, _ *needle.Needle) int64 { return e.Offset + 13 },                      // key
		func(e Entry, n *needle.Needle) int64 { // checksum
			return e.Offset + needle.HeaderSize + int64(len(n.Data)) + 5
		},
	} {
		n := all[2+4*(i/2)+i%2] // the m and l sizes of the two photos: mapped
		e, ok := v.Locate(n.Key, n.Size)
		if !ok {
			t.Fatal("locate")
		}
		off := at(e, n)
		b := []byte{0}
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x10
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		before := v.Status().Preads
		ref, _, err := v.ReadRef(n.Key, n.Cookie, n.Size, nil)
		if !IsCorruption(err) {
			ref.Release()
			t.Fatalf("damage %d: read returned %v, want a corruption error", i, err)
		}
		if v.Status().Preads != before {
			t.Fatalf("damage %d: the damaged needle was resident, but was read with a pread", i)
		}
	}
}

// mapsOf returns how many mappings of files under dir the process has.
func mapsOf(t testing.TB, dir string) int {
	t.Helper()
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), dir) {
			n++
		}
	}
	return n
}

// TestReadRefOutlivesSwapAndClose: a Ref taken before a compaction swaps
// in a new file, and before the volume closes, keeps its bytes and its
// source; the old file is unmapped when the last Ref is released, and
// reads after the swap come from the new file.
func TestReadRefOutlivesSwapAndClose(t *testing.T) {
	ps := newPins(t, 64)
	v, dir, all := osVolumeWith(t, 3, Options{FS: vfs.Default, Pins: ps})
	if got := mapsOf(t, dir); got != 1 {
		t.Fatalf("%d mappings of the volume's files, want 1", got)
	}
	// Each Ref's verified mapping is a mapping of the file too.
	pinned := readRef(t, v, all[11])
	if !pinned.Mapped() {
		t.Fatal("not mapped")
	}
	if _, err := v.Delete(context.Background(), all[0].Key, all[0].Cookie, needle.SizeAll); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Compact(context.Background(), CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := mapsOf(t, dir); got != 3 {
		t.Fatalf("%d mappings after the swap with a Ref of the old file held, want 3 (the old file and the Ref's verified mapping, the new file)", got)
	}
	after := readRef(t, v, all[11])
	if _, newOff, _ := after.Source(); func() bool { _, o, _ := pinned.Source(); return o == newOff }() {
		t.Fatal("compaction dropped a photo, yet the needle did not move")
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []Ref{pinned, after} {
		fd, off, _ := ref.Source()
		got := make([]byte, len(all[11].Data))
		if _, err := syscall.Pread(fd, got, off); err != nil || !bytes.Equal(got, all[11].Data) || !bytes.Equal(ref.Needle.Data, all[11].Data) {
			t.Fatalf("a Ref held across compaction and close lost its bytes (%v)", err)
		}
	}
	pinned.Release()
	if got := mapsOf(t, dir); got != 2 {
		t.Fatalf("%d mappings after the old file's last Ref went, want 2 (the new file and its Ref's verified mapping)", got)
	}
	after.Release()
	if got := mapsOf(t, dir); got != 0 {
		t.Fatalf("%d mappings after close and the last release, want 0", got)
	}
	if st := ps.Stats(); st.Live != 0 {
		t.Fatalf("pins %+v after close and the last release, want none live", st)
	}
	if _, _, err := v.ReadRef(all[11].Key, all[11].Cookie, all[11].Size, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v, want ErrClosed", err)
	}
}

// dropCache evicts a file from the page cache (POSIX_FADV_DONTNEED; its
// pages are clean, and nothing maps them yet).
func dropCache(t testing.TB, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// lockInPageCache reads the file at path into the page cache and keeps it
// there until the test ends, locked (mlock(2) of a mapping of it), for a
// test whose premise is that every page of the file is resident. Reading
// the file is not enough: a page in the page cache may be evicted at any
// time, memory pressure or not (on a shared machine under load, a few of
// the pages os.ReadFile had just read were seen gone 15 to 110 ms later in
// about one read of the file in 60, with gigabytes free), and the volume
// then rightly reads the needle that lost them with a pread.
func lockInPageCache(t testing.TB, path string) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	lockRangeInPageCache(t, path, 0, int(st.Size()))
}

// ioCounters are the process's and the device's read counters.
type ioCounters struct {
	readBytes  int64 // bytes this process caused to be read from storage (/proc/self/io)
	majflt     int64 // major page faults of this process (getrusage)
	diskReads  int64 // reads completed by the device (shared with every process)
	diskSource string
}

func readIOCounters(t testing.TB, path string) ioCounters {
	t.Helper()
	var c ioCounters
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no per-process I/O accounting: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "read_bytes: "); ok {
			c.readBytes, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	c.majflt = ru.Majflt
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err == nil {
		c.diskSource = fmt.Sprintf("/sys/dev/block/%d:%d/stat", unix.Major(st.Dev), unix.Minor(st.Dev))
		if b, err := os.ReadFile(c.diskSource); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				c.diskReads, _ = strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return c
}

// pageSpan is the bytes of the pages that [off, off+n) touches.
func pageSpan(off int64, n int) int64 {
	page := int64(os.Getpagesize())
	return (off+int64(n)+page-1)&^(page-1) - off&^(page-1)
}

// TestReadRefColdOneRead counts what a read of a needle that is not in the
// page cache costs: one pread, reading from storage the needle's own pages
// and no more (no readahead around it, no page-by-page faults on the
// mapping: no major faults at all); and, once the file is in the page
// cache, that a read costs no pread and reads nothing from storage; with
// verified mappings, that a read of a pinned needle costs none either. The
// device's read count is logged, not checked: other processes share it.
func TestReadRefColdOneRead(t *testing.T) {
	t.Run("hashed", func(t *testing.T) { testReadRefColdOneRead(t, Options{FS: vfs.Default}) })
	t.Run("pinned", func(t *testing.T) { testReadRefColdOneRead(t, Options{FS: vfs.Default, Pins: newPins(t, 1024)}) })
}

func testReadRefColdOneRead(t *testing.T, opts Options) {
	v, dir, all := osVolume(t, 12)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	path := DatPath(dir, 3)
	v, err := Open(context.Background(), dir, 3, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })

	// Cold: each needle read with nothing of the file in the page cache.
	var span, read, faults, disk int64
	var buf []byte
	st0 := v.Status()
	for _, n := range all {
		e, _ := v.Locate(n.Key, n.Size)
		dropCache(t, path)
		c0 := readIOCounters(t, path)
		ref, b, err := v.ReadRef(n.Key, n.Cookie, n.Size, buf)
		c1 := readIOCounters(t, path)
		if err != nil {
			t.Fatal(err)
		}
		buf = b
		if !bytes.Equal(ref.Needle.Data, n.Data) {
			t.Fatalf("key %x size %v: wrong bytes", n.Key, n.Size)
		}
		if ref.Mapped() {
			t.Fatalf("key %x size %v: dropped from the page cache, yet mapped", n.Key, n.Size)
		}
		ref.Release()
		got := c1.readBytes - c0.readBytes
		if got > pageSpan(e.Offset, e.Length)+metadataSlack {
			t.Errorf("key %x size %v: %d bytes read from storage for a needle on %d bytes of pages: readahead beyond it",
				n.Key, n.Size, got, pageSpan(e.Offset, e.Length))
		}
		span += pageSpan(e.Offset, e.Length)
		read += got
		faults += c1.majflt - c0.majflt
		disk += c1.diskReads - c0.diskReads
	}
	st1 := v.Status()
	t.Logf("cold: %d reads, %d preads, %d mapped; %.2f disk reads per image on %s (a shared device); %d bytes read from storage for %d bytes of needle pages; %d major faults",
		len(all), st1.Preads-st0.Preads, st1.MappedReads-st0.MappedReads, float64(disk)/float64(len(all)), readIOCounters(t, path).diskSource, read, span, faults)
	if st1.Preads-st0.Preads != int64(len(all)) {
		t.Errorf("cold: %d preads for %d reads, want one each", st1.Preads-st0.Preads, len(all))
	}
	if faults != 0 {
		t.Errorf("cold: %d major page faults, want none (the mapping must not read the disk)", faults)
	}
	if read == 0 {
		t.Logf("the file system reported no storage reads (not a block device?): readahead not counted")
	}

	// Warm: the whole file in the page cache, locked there.
	lockInPageCache(t, path)
	st0 = v.Status()
	c0 := readIOCounters(t, path)
	small := int64(0)
	for _, n := range all {
		ref := readRef(t, v, n)
		// Only a verified mapping serves from the mapping.
		if big := opts.Pins != nil && needle.EncodedLen(len(n.Data)) >= v.mapMin(); ref.Mapped() != big {
			t.Fatalf("key %x size %v: in the page cache, %d bytes, mapped %v", n.Key, n.Size, len(n.Data), ref.Mapped())
		}
		if !ref.Mapped() {
			small++
		}
		ref.Release()
	}
	c1 := readIOCounters(t, path)
	st1 = v.Status()
	if st1.Preads-st0.Preads != small || st1.MappedReads-st0.MappedReads != int64(len(all))-small {
		t.Errorf("warm: %d preads and %d mapped reads, want %d and %d", st1.Preads-st0.Preads, st1.MappedReads-st0.MappedReads, small, int64(len(all))-small)
	}
	if c1.readBytes != c0.readBytes || c1.majflt != c0.majflt {
		t.Errorf("warm: %d bytes read from storage and %d major faults, want none", c1.readBytes-c0.readBytes, c1.majflt-c0.majflt)
	}
	if opts.Pins == nil {
		return
	}
	// Pinned: every large needle read again from its verified mapping,
	// no pread, nothing read from storage.
	hits := opts.Pins.Stats().Hits
	for _, n := range all {
		ref := readRef(t, v, n)
		ref.Release()
	}
	c2 := readIOCounters(t, path)
	st2 := v.Status()
	if got := opts.Pins.Stats().Hits - hits; got != int64(len(all))-small || st2.Preads-st1.Preads != small {
		t.Errorf("pinned: %d hits and %d preads, want %d and %d", got, st2.Preads-st1.Preads, int64(len(all))-small, small)
	}
	if c2.readBytes != c1.readBytes || c2.majflt != c1.majflt {
		t.Errorf("pinned: %d bytes read from storage and %d major faults, want none", c2.readBytes-c1.readBytes, c2.majflt-c1.majflt)
	}
}

// metadataSlack allows for the file system's own blocks (an extent tree
// block) that a first read of a file may fetch besides its data.
const metadataSlack = 16 << 10

// TestReadRefWithoutMapping: on a file system that cannot map (MemFS)
// ReadRef reads with one pread into the buffer, as Read does.
func TestReadRefWithoutMapping(t *testing.T) {
	v := create(t, memFS(t), 4, Options{})
	defer v.Close()
	ns := photo(5, 6)
	mustWrite(t, v, ns)
	if v.Status().Mapped {
		t.Fatal("a MemFS volume reports a mapping")
	}
	for _, n := range ns {
		ref := readRef(t, v, n)
		if ref.Mapped() {
			t.Fatal("mapped on MemFS")
		}
		if _, _, ok := ref.Source(); ok {
			t.Fatal("a buffered Ref has a source")
		}
		ref.Release()
	}
	if st := v.Status(); st.Preads != int64(len(ns)) || st.MappedReads != 0 {
		t.Fatalf("%d preads, %d mapped reads, want %d and 0", st.Preads, st.MappedReads, len(ns))
	}
}

// BenchmarkVolumeReadWarm compares Read (a pread into a buffer) with
// ReadRef (with verified mappings: verified in place through the needle's
// own mapping, then answered from it without hashing) on needles in the
// page cache, 5 KB and 120 KB, from parallel readers; it reports preads
// per read. Run: go test -run XXX -bench VolumeReadWarm ./store/volume/
func BenchmarkVolumeReadWarm(b *testing.B) {
	v, _, all := osVolumeWith(b, 40, Options{FS: vfs.Default, Pins: newPins(b, 1024)})
	defer v.Close()
	for _, size := range []needle.SizeCode{needle.SizeThumb, needle.SizeMedium} {
		var ns []*needle.Needle
		for _, n := range all {
			if n.Size == size {
				ns = append(ns, n)
			}
		}
		for _, mode := range []string{"Read", "ReadRef"} {
			b.Run(fmt.Sprintf("size=%v/%s", size, mode), func(b *testing.B) {
				b.SetBytes(int64(len(ns[0].Data)))
				before := v.Status().Preads
				b.RunParallel(func(pb *testing.PB) {
					r := rand.New(rand.NewPCG(rand.Uint64(), 0))
					var buf []byte
					for pb.Next() {
						n := ns[r.IntN(len(ns))]
						var err error
						if mode == "Read" {
							_, buf, err = v.Read(n.Key, n.Cookie, n.Size, buf)
						} else {
							var ref Ref
							ref, buf, err = v.ReadRef(n.Key, n.Cookie, n.Size, buf)
							ref.Release()
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(v.Status().Preads-before)/float64(b.N), "preads/read")
			})
		}
	}
}

// BenchmarkVolumeReadCold reads needles of the four bench sizes, each with
// the file dropped from the page cache first, with ReadRef (its own
// descriptor, no readahead) and with Read (the volume's descriptor, whose
// readahead the kernel sizes), and reports per read: the bytes read from
// storage over the bytes of the needle's pages (1.00 means no readahead
// waste), the device's completed reads (other processes share the device:
// a floor, not an exact count) and major faults. Run:
// go test -run XXX -bench VolumeReadCold -benchtime 200x ./store/volume/
func BenchmarkVolumeReadCold(b *testing.B) {
	v, dir, all := osVolume(b, 12)
	defer v.Close()
	path := DatPath(dir, 3)
	for _, mode := range []string{"Read", "ReadRef"} {
		b.Run(mode, func(b *testing.B) {
			r := rand.New(rand.NewPCG(9, 9))
			var span, read, disk, faults int64
			var buf []byte
			for range b.N {
				n := all[r.IntN(len(all))]
				e, _ := v.Locate(n.Key, n.Size)
				b.StopTimer()
				dropCache(b, path)
				c0 := readIOCounters(b, path)
				b.StartTimer()
				var err error
				if mode == "Read" {
					_, buf, err = v.Read(n.Key, n.Cookie, n.Size, buf)
				} else {
					var ref Ref
					ref, buf, err = v.ReadRef(n.Key, n.Cookie, n.Size, buf)
					ref.Release()
				}
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				c1 := readIOCounters(b, path)
				span += pageSpan(e.Offset, e.Length)
				read += c1.readBytes - c0.readBytes
				disk += c1.diskReads - c0.diskReads
				faults += c1.majflt - c0.majflt
				b.StartTimer()
			}
			b.ReportMetric(float64(read)/float64(span), "storage-bytes/needle-bytes")
			b.ReportMetric(float64(disk)/float64(b.N), "disk-reads/read")
			b.ReportMetric(float64(faults)/float64(b.N), "majflt/read")
		})
	}
}

// TestMappedFaultIsAnError: touching a mapped page the file does not back
// (the file is shorter than the range read, as when the disk fails to page
// it in) is returned as errMapFault, not a crash of the process.
func TestMappedFaultIsAnError(t *testing.T) {
	page := os.Getpagesize()
	path := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(path, bytes.Repeat([]byte{7}, page), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := vfs.Default.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := mapDat(f, int64(3*page))
	if err != nil || m == nil {
		t.Fatalf("map: %v", err)
	}
	defer m.release()
	// A decoder that reads the third page, which no byte of the file backs.
	if _, err := decodeMapped(func(b []byte) (needle.Needle, error) { return needle.Needle{Key: uint64(b[2*page])}, nil }, m.data[:3*page], 0); !errors.Is(err, errMapFault) {
		t.Fatalf("reading a page past the end of the file: %v, want errMapFault", err)
	}
}
