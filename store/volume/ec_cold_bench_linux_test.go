package volume

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// ecColdBenchPhotos is how many photos (four needles each, of the sizes
// of benchPhotoSizes) the sealed volume of BenchmarkECColdRead holds.
const ecColdBenchPhotos = 100

// BenchmarkECColdRead measures the cold reads of a sealed EC volume: a
// volume of ecColdBenchPhotos photos (400 needles of 5 to 400 KiB) is
// erasure-coded (1 MiB blocks, so that some needles straddle two), and
// each iteration drops every shard from the page cache (posix_fadvise
// DONTNEED), opens the volume afresh (a new window of the direct policy)
// and reads every needle once, in a random order, checking its checksum.
// "direct" reads the needles of MapMin bytes or more with one aligned
// O_DIRECT read per local shard segment (ECOptions.Direct; the policy's
// window, approximate, reads a few buffered), "buffered" through the page
// cache; the smaller needles are read buffered in both.
//
// It reports reads/s, CPU µs per image (user and system time of the
// process over the timed reads), and per image: the volume's preads (one
// per shard segment) and direct reads, the bytes the process read from
// storage (/proc/self/io), and the reads the device completed
// (/proc/diskstats: shared with every process on the device, so a
// bound, not an exact count). Run with -benchtime=5x; -count=3 runs the
// two modes interleaved.
func BenchmarkECColdRead(b *testing.B) {
	v, dir, all := osVolumeWith(b, ecColdBenchPhotos, Options{FS: vfs.Default})
	for _, n := range all {
		got, _, err := v.Read(n.Key, n.Cookie, n.Size, nil)
		if err != nil {
			b.Fatal(err)
		}
		n.Checksum = got.Checksum // the ETag the EC volume must answer with
	}
	if err := v.Close(); err != nil {
		b.Fatal(err)
	}
	if _, err := EncodeECFile(context.Background(), DatPath(dir, 3), dir, Options{FS: vfs.Default}, ECEncodeOptions{}); err != nil {
		b.Fatal(err)
	}
	large := 0
	for _, n := range all {
		if needle.EncodedLen(len(n.Data)) >= MapMin {
			large++
		}
	}
	for _, mode := range []string{"direct", "buffered"} {
		b.Run(mode, func(b *testing.B) {
			var preads, direct, coldBuffered, readBytes, diskReads int64
			var cpu time.Duration
			r := rand.New(rand.NewPCG(3, 4))
			var buf []byte
			b.ResetTimer()
			b.StopTimer()
			for range b.N {
				opts := ECOptions{FS: vfs.Default}
				if mode == "direct" {
					opts.Direct = NewDirectReads(0)
				}
				e, err := OpenEC(context.Background(), dir, 3, opts)
				if err != nil {
					b.Fatal(err)
				}
				if st := e.Status(); mode == "direct" && st.DirectOff != "" {
					e.Close()
					b.Skipf("direct reads off on this file system: %s", st.DirectOff)
				}
				r.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
				for i := range ECShards {
					dropCache(b, ECShardPath(dir, 3, i))
				}
				st0, io0, cpu0 := e.Status(), readIOCounters(b, ECShardPath(dir, 3, 0)), processCPU(b)
				b.StartTimer()
				for _, n := range all {
					var got needle.Needle
					if got, buf, err = e.Read(context.Background(), n.Key, n.Cookie, n.Size, buf); err != nil {
						b.Fatalf("key %x size %v: %v", n.Key, n.Size, err)
					}
					if got.Checksum != n.Checksum || len(got.Data) != len(n.Data) {
						b.Fatalf("key %x size %v: wrong length or checksum", n.Key, n.Size)
					}
				}
				b.StopTimer()
				cpu1, io1, st1 := processCPU(b), readIOCounters(b, ECShardPath(dir, 3, 0)), e.Status()
				cpu += cpu1 - cpu0
				preads += st1.Preads - st0.Preads
				direct += st1.DirectReads - st0.DirectReads
				coldBuffered += st1.ColdBufferedReads - st0.ColdBufferedReads
				readBytes += io1.readBytes - io0.readBytes
				diskReads += io1.diskReads - io0.diskReads
				if st1.Degraded != st0.Degraded {
					b.Fatalf("%d degraded reads of a healthy volume", st1.Degraded-st0.Degraded)
				}
				if err := e.Close(); err != nil {
					b.Fatal(err)
				}
			}
			images := float64(b.N * len(all))
			// The policy's window is approximate (a slot shared by two
			// needles reads the second buffered): most, not all.
			if mode == "direct" && direct < int64(b.N*large)*9/10 {
				b.Fatalf("%d direct reads (%d cold buffered) of %d cold needles of MapMin bytes or more", direct, coldBuffered, b.N*large)
			}
			b.ReportMetric(images/b.Elapsed().Seconds(), "reads/s")
			b.ReportMetric(float64(cpu.Microseconds())/images, "cpu-µs/image")
			b.ReportMetric(float64(preads)/images, "preads/image")
			b.ReportMetric(float64(direct)/images, "direct/image")
			b.ReportMetric(float64(coldBuffered)/images, "cold-buffered/image")
			b.ReportMetric(float64(readBytes)/images/1024, "KiB-read/image")
			b.ReportMetric(float64(diskReads)/images, "disk-reads/image")
			b.ReportMetric(0, "ns/op") // an op is a whole pass: reads/s says it
		})
	}
}

// processCPU returns the user and system CPU time the process has used.
func processCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
