package volume

import (
	"context"
	"math/rand/v2"
	"os"
	"runtime"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// BenchmarkECRegenerateIndex rebuilds the ecx of the benchmark volume (64
// MiB by default, HAYBALE_EC_BENCH_MB) from its shards, syncs skipped:
// "healthy" with every shard, "degraded" with two data shards lost (their
// bytes rebuilt from parity as the walk reads them). It reports MB/s of
// volume walked (b.SetBytes is the encoded .dat's size).
func BenchmarkECRegenerateIndex(b *testing.B) {
	src, out := b.TempDir(), b.TempDir()
	buildSealedBench(b, src)
	fs := noSyncFS{vfs.Default}
	res, err := EncodeECFile(context.Background(), DatPath(src, 1), out, Options{FS: fs}, ECEncodeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	want, err := os.ReadFile(ECIndexPath(out, 1))
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		lost []int
	}{{"healthy", nil}, {"degraded", []int{0, 4}}} {
		b.Run(c.name, func(b *testing.B) {
			for _, s := range c.lost {
				os.Rename(ECShardPath(out, 1, s), ECShardPath(out, 1, s)+".away")
				defer os.Rename(ECShardPath(out, 1, s)+".away", ECShardPath(out, 1, s))
			}
			b.SetBytes(res.DataSize)
			for b.Loop() {
				os.Remove(ECIndexPath(out, 1))
				if _, err := RegenerateECX(context.Background(), out, 1, ECOptions{FS: fs}); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if got, _ := os.ReadFile(ECIndexPath(out, 1)); string(got) != string(want) {
				b.Fatal("regenerated ecx differs from the original")
			}
		})
	}
}

// BenchmarkECMergeJournal merges a holder's journal of 100,000 deletes
// into a volume that has none (one write, one sync, on MemFS), and reports
// the cost per delete and the RAM the journal's record set keeps per
// delete.
func BenchmarkECMergeJournal(b *testing.B) {
	const n = 100_000
	f := sealedVolume(b, 31, 4)
	f.encode(b, f.fs)
	r := rand.New(rand.NewPCG(3, 4))
	dels := make([]ECDelete, n)
	for i := range dels {
		dels[i] = ECDelete{Key: r.Uint64(), Cookie: r.Uint64(), Size: needle.SizeAll}
	}
	var perDelete float64
	for b.Loop() {
		b.StopTimer()
		fs := f.fs.CrashClone()
		e, err := OpenEC(context.Background(), testDir, ecVid, ECOptions{FS: fs})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()
		added, err := e.MergeJournal(context.Background(), dels)
		b.StopTimer()
		if err != nil || added != n {
			b.Fatalf("merged %d: %v", added, err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perDelete = float64(after.HeapAlloc-before.HeapAlloc) / n
		e.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/delete")
	b.ReportMetric(perDelete, "set-B/delete")
}
