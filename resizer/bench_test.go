package resizer

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/jpeg"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// cpuTime returns the user+system CPU time of the process so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// photoLike returns a w×h opaque image resembling a photograph: smooth
// gradients, a few hard-edged shapes and sensor-like noise.
func photoLike(w, h int, seed int64) *image.RGBA {
	rng := rand.New(rand.NewSource(seed))
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			n := rng.Intn(17) - 8
			r := 40 + 180*x/w + n
			g := 60 + 150*y/h + n
			b := 200 - 120*(x+y)/(w+h) + n
			// A dark disc and a bright bar, for edges.
			dx, dy := x-w/3, y-h/2
			if dx*dx+dy*dy < (h/5)*(h/5) {
				r, g, b = r/3, g/3, b/2
			}
			if y > h*3/4 && y < h*3/4+h/40 {
				r, g, b = 250+n, 245+n, 230+n
			}
			o := m.PixOffset(x, y)
			m.Pix[o], m.Pix[o+1], m.Pix[o+2], m.Pix[o+3] = clampInt(r), clampInt(g), clampInt(b), 255
		}
	}
	return m
}

func clampInt(v int) uint8 { return uint8(max(0, min(255, v))) }

func encodeJPEG(tb testing.TB, m image.Image, q int) []byte {
	tb.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, m, &jpeg.Options{Quality: q}); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// BenchmarkResize12MP measures all four sizes of a 4000x3000 photo-like JPEG
// (q90), reporting CPU seconds (user+sys, all threads) and wall
// milliseconds per photo, with one and with all cores.
func BenchmarkResize12MP(b *testing.B) {
	data := encodeJPEG(b, photoLike(4000, 3000, 1), 90)
	for _, procs := range []int{1, runtime.NumCPU()} {
		b.Run(fmt.Sprintf("procs=%d", procs), func(b *testing.B) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			r := New(Options{})
			ctx := context.Background()
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			cpu0, wall0 := cpuTime(b), time.Now()
			for range b.N {
				if _, err := r.Process(ctx, data); err != nil {
					b.Fatal(err)
				}
			}
			cpu, wall := cpuTime(b)-cpu0, time.Since(wall0)
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/photo")
			b.ReportMetric(float64(wall.Milliseconds())/float64(b.N), "ms/photo")
		})
	}
}

// BenchmarkResizeCorpus processes every accepted photo of HAYBALE_PHOTOS
// once per iteration and reports photos per second and CPU seconds per
// photo.
func BenchmarkResizeCorpus(b *testing.B) {
	dir := photosDir(b)
	r := New(Options{})
	var inputs [][]byte
	for _, c := range corpus {
		if c.reject != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, c.file))
		if err != nil {
			b.Fatal(err)
		}
		inputs = append(inputs, data)
	}
	ctx := context.Background()
	b.ResetTimer()
	cpu0, wall0 := cpuTime(b), time.Now()
	for range b.N {
		for _, data := range inputs {
			if _, err := r.Process(ctx, data); err != nil {
				b.Fatal(err)
			}
		}
	}
	cpu, wall := cpuTime(b)-cpu0, time.Since(wall0)
	n := float64(b.N * len(inputs))
	b.ReportMetric(n/wall.Seconds(), "photos/s")
	b.ReportMetric(cpu.Seconds()/n, "cpu-s/photo")
}

// BenchmarkWebPCost measures the CPU seconds per upload with and without
// the WebP outputs, on the 12 MP synthetic JPEG and on the mid-size
// corpus photos (HAYBALE_PHOTOS) named below; the WebP runs start after
// one warm-up encode, so the one-time WebAssembly compilation is not
// counted.
func BenchmarkWebPCost(b *testing.B) {
	inputs := map[string][]byte{"12MP-synthetic": encodeJPEG(b, photoLike(4000, 3000, 1), 90)}
	if dir := os.Getenv("HAYBALE_PHOTOS"); dir != "" {
		for _, f := range []string{"Landscape_1.jpg", "Storm.jpg", "canon_hdr_NO.jpg", "4.webp"} {
			data, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				b.Fatal(err)
			}
			inputs[f] = data
		}
	}
	warm := New(Options{})
	if _, err := warm.Process(context.Background(), encodeJPEG(b, photoLike(64, 64, 2), 90)); err != nil {
		b.Fatal(err)
	}
	for name, data := range inputs {
		for _, noWebP := range []bool{true, false} {
			b.Run(fmt.Sprintf("%s/webp=%v", name, !noWebP), func(b *testing.B) {
				r := New(Options{NoWebP: noWebP})
				cpu0 := cpuTime(b)
				for range b.N {
					if _, err := r.Process(context.Background(), data); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric((cpuTime(b)-cpu0).Seconds()/float64(b.N), "cpu-s/photo")
			})
		}
	}
}
