package volume

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/klauspost/reedsolomon"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// benchECMB is the size of the volume the EC benchmarks encode:
// HAYBALE_EC_BENCH_MB, default 64.
func benchECMB() int64 {
	if mb, err := strconv.ParseInt(os.Getenv("HAYBALE_EC_BENCH_MB"), 10, 64); err == nil && mb > 0 {
		return mb
	}
	return 64
}

// benchPhotoNeedles returns the data sizes of one photo: the typical sizes
// of t, s, m and l, each varied by up to a quarter, so offsets do not
// repeat.
func benchPhotoNeedles(r *rand.Rand) [4]int {
	var s [4]int
	for i, base := range benchPhotoSizes {
		s[i] = base - base/4 + r.IntN(base/2)
	}
	return s
}

// buildSealedBench writes photos of typical sizes into a new volume in dir
// until it reaches the benchmark size, and seals it.
func buildSealedBench(b *testing.B, dir string) {
	b.Helper()
	ctx := context.Background()
	v, err := Create(ctx, dir, 1, Options{FS: noSyncFS{vfs.Default}})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 2*benchPhotoSizes[3])
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	limit := benchECMB() << 20
	for k := uint64(1); v.Status().Size < limit; k++ {
		ns := make([]*needle.Needle, 4)
		for i, s := range benchPhotoNeedles(r) {
			ns[i] = &needle.Needle{Key: k, Cookie: k, Size: needle.SizeCode(i), ContentType: needle.TypeJPEG, Data: data[:s]}
		}
		if _, err := v.Write(ctx, ns); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.MarkReadOnly(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	if _, err := v.Compact(ctx, CompactOptions{}); err != nil {
		b.Fatal(err)
	}
}

func fileSize(b *testing.B, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}

func removeEC(dir string, vid uint32) {
	for _, p := range ecFiles(dir, vid, true) {
		os.Remove(p)
	}
}

// BenchmarkECEncode encodes a sealed volume of typical photos (64 MiB by
// default, HAYBALE_EC_BENCH_MB) with the default block sizes, syncs
// skipped so that the figure is the CPU and page-cache cost. It reports
// MB/s of volume encoded (run with -cpu 1 for MB/s per core), the bytes on
// disk per byte of live needles for EC and for three replicas, and the
// share of needles that straddle a block.
func BenchmarkECEncode(b *testing.B) {
	src, out := b.TempDir(), b.TempDir()
	buildSealedBench(b, src)
	path := DatPath(src, 1)
	datSize := fileSize(b, path)
	var res ECEncodeResult
	b.SetBytes(datSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		removeEC(out, 1)
		b.StartTimer()
		var err error
		if res, err = EncodeECFile(context.Background(), path, out, Options{FS: noSyncFS{vfs.Default}}, ECEncodeOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	ecBytes := ECShards*res.ShardSize + fileSize(b, ECIndexPath(out, 1)) + fileSize(b, ECJournalPath(out, 1))
	replicaBytes := 3 * (datSize + fileSize(b, IdxPath(src, 1)))
	b.ReportMetric(float64(ecBytes)/float64(res.LiveBytes), "ec-disk/live")
	b.ReportMetric(float64(replicaBytes)/float64(res.LiveBytes), "3rep-disk/live")
	b.ReportMetric(100*float64(res.Straddling)/float64(res.Needles), "%straddling")
}

// BenchmarkECRebuild regenerates 4 lost shards (two data, two parity) of
// the benchmark volume from the other 10, syncs skipped, and reports MB/s
// of volume covered (b.SetBytes is the encoded .dat's size).
func BenchmarkECRebuild(b *testing.B) {
	src, out := b.TempDir(), b.TempDir()
	buildSealedBench(b, src)
	res, err := EncodeECFile(context.Background(), DatPath(src, 1), out, Options{FS: noSyncFS{vfs.Default}}, ECEncodeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	lost := []int{0, 5, 10, 13}
	b.SetBytes(res.DataSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for _, s := range lost {
			os.Remove(ECShardPath(out, 1, s))
		}
		b.StartTimer()
		got, err := RebuildEC(context.Background(), out, 1, nil, ECFilesOptions{FS: noSyncFS{vfs.Default}})
		if err != nil || len(got) != len(lost) {
			b.Fatalf("rebuild: %v %v", got, err)
		}
	}
}

// BenchmarkRSEncode10x4x1M is the ceiling: klauspost/reedsolomon encoding
// 10 data shards of 1 MiB into 4 parity shards in memory, as the library's
// own BenchmarkEncode10x4x1M does (b.SetBytes is the 10 MiB of data).
func BenchmarkRSEncode10x4x1M(b *testing.B) {
	enc, err := reedsolomon.New(ECDataShards, ECParityShards)
	if err != nil {
		b.Fatal(err)
	}
	shards := make([][]byte, ECShards)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range shards {
		shards[i] = make([]byte, 1<<20)
		if i < ECDataShards {
			for j := range shards[i] {
				shards[i][j] = byte(r.Uint32())
			}
		}
	}
	b.SetBytes(ECDataShards << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := enc.Encode(shards); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkECRead reads random needles of the benchmark volume from its
// EC form (files in the page cache): healthy (one pread on the data shard,
// two when straddling) and degraded (the needle's data shard lost, its
// range rebuilt from 10 others). It reports preads per read; ns/op is the
// latency.
func BenchmarkECRead(b *testing.B) {
	src, out := b.TempDir(), b.TempDir()
	buildSealedBench(b, src)
	if _, err := EncodeECFile(context.Background(), DatPath(src, 1), out, Options{FS: noSyncFS{vfs.Default}}, ECEncodeOptions{}); err != nil {
		b.Fatal(err)
	}
	e, err := OpenEC(context.Background(), out, 1, ECOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	var healthy, onLost []Entry
	lost := []int{0, 1, 2, 3}
	e.Entries(func(en Entry) bool {
		healthy = append(healthy, en)
		for _, s := range e.geo.segments(en.Offset, en.Length, nil) {
			if s.shard <= 3 {
				onLost = append(onLost, en)
				break
			}
		}
		return true
	})
	run := func(b *testing.B, entries []Entry) {
		r := rand.New(rand.NewPCG(5, 6))
		var buf []byte
		before := e.Status()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			en := entries[r.IntN(len(entries))]
			var err error
			if _, buf, err = e.Read(context.Background(), en.Key, en.Key, en.Size, buf); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		after := e.Status()
		b.ReportMetric(float64(after.Preads-before.Preads)/float64(b.N), "preads/read")
		b.ReportMetric(float64(after.Degraded-before.Degraded)/float64(b.N), "degraded/read")
	}
	b.Run("healthy", func(b *testing.B) { run(b, healthy) })
	b.Run("degraded", func(b *testing.B) { withLost(e, lost, func() { run(b, onLost) }) })
}

// BenchmarkECStraddleShare lays a full 32 GiB volume of typical photos
// (no I/O: offsets only) over the default geometry and reports the share
// of needles that straddle a block, with the 1 MiB small blocks alone (a
// volume under 10 GiB) and with the full layout (1 GiB blocks, 1 MiB tail).
func BenchmarkECStraddleShare(b *testing.B) {
	r := rand.New(rand.NewPCG(7, 8))
	var lengths []int
	total := int64(SuperblockSize)
	for total < MaxSize-(4<<20) {
		for _, s := range benchPhotoNeedles(r) {
			l := needle.EncodedLen(s)
			lengths = append(lengths, l)
			total += int64(l)
		}
	}
	count := func(g ecGeometry) float64 {
		off := int64(SuperblockSize)
		straddling := 0
		var segs []ecSegment
		for _, l := range lengths {
			if segs = g.segments(off, l, segs[:0]); len(segs) > 1 {
				straddling++
			}
			off += int64(l)
		}
		return 100 * float64(straddling) / float64(len(lengths))
	}
	var full, small float64
	for i := 0; i < b.N; i++ {
		full = count(ecGeometry{dataSize: total, large: DefaultECLargeBlock, small: DefaultECSmallBlock})
		small = count(ecGeometry{dataSize: total, large: DefaultECSmallBlock, small: DefaultECSmallBlock})
	}
	b.ReportMetric(full, "%straddling-32GiB")
	b.ReportMetric(small, "%straddling-1MiB-blocks")
	b.ReportMetric(float64(len(lengths)), "needles")
}
