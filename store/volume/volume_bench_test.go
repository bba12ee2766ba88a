package volume

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/internal/vfs/errorfs"
	"github.com/haybale/haybale/needle"
)

// noSyncFS turns every Sync into a no-op: the baseline that durable writes
// are compared with.
type noSyncFS struct{ vfs.FS }

type noSyncFile struct{ vfs.File }

func (noSyncFile) Sync() error { return nil }

func (fs noSyncFS) Create(name string) (vfs.File, error) {
	f, err := fs.FS.Create(name)
	return noSyncFile{f}, err
}

func (fs noSyncFS) OpenReadWrite(name string) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name)
	return noSyncFile{f}, err
}

// benchPhotoSizes are typical encoded sizes of t, s, m and l.
var benchPhotoSizes = [4]int{5 << 10, 30 << 10, 120 << 10, 400 << 10}

// BenchmarkVolumeAppend measures parallel writers on a real file, with
// fdatasync before each acknowledgement (durable) and without (nosync), for
// small needles and for whole photos (four needles of typical sizes). The
// durable/nosync ratio shows what group commit recovers. writers=N runs
// exactly N goroutines, each writing in a closed loop.
func BenchmarkVolumeAppend(b *testing.B) {
	payloads := map[string][]int{"needle=1KiB": {1 << 10}, "photo=4sizes": benchPhotoSizes[:]}
	for _, name := range []string{"needle=1KiB", "photo=4sizes"} {
		sizes := payloads[name]
		for _, writers := range []int{1, 16, 64} {
			for _, durable := range []bool{true, false} {
				mode := "durable"
				var fs vfs.FS = vfs.Default
				if !durable {
					mode, fs = "nosync", noSyncFS{vfs.Default}
				}
				b.Run(fmt.Sprintf("%s/writers=%d/%s", name, writers, mode), func(b *testing.B) {
					v, err := Create(context.Background(), b.TempDir(), 1, Options{FS: fs})
					if err != nil {
						b.Fatal(err)
					}
					defer v.Close()
					data := make([]byte, sizes[len(sizes)-1])
					for i := range data {
						data[i] = byte(i * 7)
					}
					var key atomic.Uint64
					bytesPerOp := 0
					for _, s := range sizes {
						bytesPerOp += s
					}
					b.SetBytes(int64(bytesPerOp))
					b.ResetTimer()
					start := time.Now()
					// Exactly writers goroutines, each writing in a closed
					// loop (RunParallel would start a multiple of
					// GOMAXPROCS).
					var ops atomic.Int64
					var wg sync.WaitGroup
					for w := 0; w < writers; w++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for ops.Add(1) <= int64(b.N) {
								k := key.Add(1)
								ns := make([]*needle.Needle, len(sizes))
								for i, s := range sizes {
									ns[i] = &needle.Needle{Key: k, Cookie: k, Size: needle.SizeCode(i), ContentType: needle.TypeJPEG, Data: data[:s]}
								}
								if _, err := v.Write(context.Background(), ns); err != nil {
									b.Error(err)
									return
								}
							}
						}()
					}
					wg.Wait()
					sec := time.Since(start).Seconds()
					st := v.Status()
					b.ReportMetric(float64(st.Needles)/float64(max(st.Syncs, 1))/float64(len(sizes)), "writes/sync")
					b.ReportMetric(float64(b.N*len(sizes))/sec, "needles/s")
					b.ReportMetric(float64(b.N)/sec, "writes/s")
				})
			}
		}
	}
}

// BenchmarkVolumeRead measures parallel random reads from a real file and
// counts the preads each read costs through the vfs seam (always 1).
func BenchmarkVolumeRead(b *testing.B) {
	counter := &errorfs.Counter{}
	fs := errorfs.Wrap(vfs.Default, counter)
	v, err := Create(context.Background(), b.TempDir(), 1, Options{FS: fs})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	const photos = 2000
	data := make([]byte, benchPhotoSizes[3])
	for k := uint64(1); k <= photos; k++ {
		ns := make([]*needle.Needle, 4)
		for i, s := range benchPhotoSizes {
			ns[i] = &needle.Needle{Key: k, Cookie: k, Size: needle.SizeCode(i), Data: data[:s]}
		}
		if _, err := v.Write(context.Background(), ns); err != nil {
			b.Fatal(err)
		}
	}
	for i, size := range []needle.SizeCode{needle.SizeThumb, needle.SizeMedium} {
		b.Run("size="+size.String(), func(b *testing.B) {
			b.SetBytes(int64(benchPhotoSizes[i*2]))
			before := counter.Count(errorfs.OpRead)
			var seed atomic.Uint64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				r := rand.New(rand.NewPCG(seed.Add(1), 0))
				var buf []byte
				for pb.Next() {
					k := 1 + r.Uint64N(photos)
					var err error
					if _, buf, err = v.Read(k, k, size, buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(counter.Count(errorfs.OpRead)-before)/float64(b.N), "preads/read")
		})
	}
}

// buildBenchVolume writes photos*4 small needles into volume vid in dir,
// in large batches, and closes it.
func buildBenchVolume(b *testing.B, dir string, vid uint32, photos int, firstKey uint64) {
	b.Helper()
	v, err := Create(context.Background(), dir, vid, Options{})
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 16)
	const batchPhotos = 2500
	ns := make([]*needle.Needle, 0, batchPhotos*4)
	for p := 0; p < photos; p++ {
		k := firstKey + uint64(p)*3 // gaps, as when many volumes share the sequencer
		for i := 0; i < 4; i++ {
			ns = append(ns, &needle.Needle{Key: k, Cookie: k, Size: needle.SizeCode(i), Data: data})
		}
		if len(ns) == cap(ns) || p == photos-1 {
			if _, err := v.Write(context.Background(), ns); err != nil {
				b.Fatal(err)
			}
			ns = ns[:0]
		}
	}
	if err := v.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkVolumeOpen opens a volume of 1 million needles (250,000
// photos) from its idx, and from the .dat alone (idx missing), and reports
// milliseconds per open.
func BenchmarkVolumeOpen(b *testing.B) {
	dir := b.TempDir()
	buildBenchVolume(b, dir, 1, 250_000, 1)
	idx := fileBytes(b, vfs.Default, IdxPath(dir, 1))
	for _, withIdx := range []bool{true, false} {
		name := "from=idx"
		if !withIdx {
			name = "from=scan"
		}
		b.Run(name, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				writeFile(b, vfs.Default, IdxPath(dir, 1), idx)
				if !withIdx {
					writeFile(b, vfs.Default, IdxPath(dir, 1), nil)
				}
				b.StartTimer()
				start := time.Now()
				v, err := Open(context.Background(), dir, 1, Options{})
				if err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
				if got := v.Status().Images; got != 1_000_000 {
					b.Fatalf("%d images, want 1000000", got)
				}
				v.Close()
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/open")
		})
	}
}
