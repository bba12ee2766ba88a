package store

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// BenchmarkStoreOpen measures how long a store holding 10 million images
// (10 volumes of 250,000 photos x 4 sizes, small images so the files stay
// small) takes from Open to serving: every volume recovered from its idx,
// in parallel. It reports ms/open and images.
func BenchmarkStoreOpen(b *testing.B) {
	const volumes, photosPerVolume = 10, 250_000
	dir := b.TempDir()
	ctx := context.Background()
	data := make([]byte, 16)
	for vid := uint32(1); vid <= volumes; vid++ {
		v, err := volume.Create(ctx, dir, vid, volume.Options{})
		if err != nil {
			b.Fatal(err)
		}
		ns := make([]*needle.Needle, 0, 10_000)
		for p := 0; p < photosPerVolume; p++ {
			key := uint64(p)*volumes + uint64(vid) // keys interleaved across volumes
			for _, s := range needle.PhotoSizes {
				ns = append(ns, &needle.Needle{Key: key, Cookie: key, Size: s, Data: data})
			}
			if len(ns) == cap(ns) {
				if _, err := v.Write(ctx, ns); err != nil {
					b.Fatal(err)
				}
				ns = ns[:0]
			}
		}
		if err := v.Close(); err != nil {
			b.Fatal(err)
		}
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		s, err := Open(ctx, Options{Dir: dir, Logger: logger})
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		images := 0
		for _, v := range s.Volumes() {
			images += v.Status().Images
		}
		if images != volumes*photosPerVolume*4 || !s.Ready() {
			b.Fatalf("%d images, ready %v", images, s.Ready())
		}
		b.StopTimer()
		s.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/open")
	b.ReportMetric(volumes*photosPerVolume*4, "images")
}
