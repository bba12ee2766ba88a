package volume

import (
	"context"
	"os"
	"strconv"
	"testing"

	"github.com/haybale/haybale/needle"
)

// benchVolumeMB is the size of the volume the throughput benchmarks build:
// HAYBALE_BENCH_VOLUME_MB, default 2048.
func benchVolumeMB() int64 {
	if mb, err := strconv.ParseInt(os.Getenv("HAYBALE_BENCH_VOLUME_MB"), 10, 64); err == nil && mb > 0 {
		return mb
	}
	return 2048
}

// buildDeletedHalf writes photos of typical sizes into a new volume until
// it reaches the benchmark size, deleting every second photo, and returns
// the file's size.
func buildDeletedHalf(b *testing.B, dir string) int64 {
	b.Helper()
	ctx := context.Background()
	v, err := Create(ctx, dir, 1, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	data := make([]byte, benchPhotoSizes[3])
	for i := range data {
		data[i] = byte(i * 31)
	}
	limit := benchVolumeMB() << 20
	for k := uint64(1); v.Status().Size < limit; k++ {
		ns := make([]*needle.Needle, 4)
		for i, s := range benchPhotoSizes {
			ns[i] = &needle.Needle{Key: k, Cookie: k, Size: needle.SizeCode(i), ContentType: needle.TypeJPEG, Data: data[:s]}
		}
		if _, err := v.Write(ctx, ns); err != nil {
			b.Fatal(err)
		}
		if k%2 == 0 {
			if _, err := v.Delete(ctx, k, k, needle.SizeAll); err != nil {
				b.Fatal(err)
			}
		}
	}
	return v.Status().Size
}

// BenchmarkCompactThroughput compacts a volume (2 GiB by default, half of
// its photos deleted) and reports MB/s of volume processed.
func BenchmarkCompactThroughput(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		size := buildDeletedHalf(b, dir)
		v, err := Open(context.Background(), dir, 1, Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(size)
		b.StartTimer()
		res, err := v.Compact(context.Background(), CompactOptions{})
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(res.SizeBefore)/(1<<20)/res.Duration.Seconds(), "MB/s")
		b.ReportMetric(float64(res.Reclaimed)/float64(res.SizeBefore), "reclaimed-fraction")
		v.Close()
		os.RemoveAll(dir)
	}
}

// BenchmarkVerifyThroughput reads and checks every needle of a volume (2
// GiB by default) as `haybale volume verify` does, and reports MB/s.
func BenchmarkVerifyThroughput(b *testing.B) {
	dir := b.TempDir()
	size := buildDeletedHalf(b, dir)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rep, err := InspectFile(context.Background(), DatPath(dir, 1), InspectOptions{})
		if err != nil || !rep.Healthy() {
			b.Fatalf("%+v %v", rep, err)
		}
	}
}
