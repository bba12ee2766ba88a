package resizer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/imagetest"
)

// TestMemoryEstimateBoundsAllocations checks the header estimate against
// what Process really allocates (every byte, garbage included, which bounds
// the peak of live bytes) on each decoder path, bombs included.
func TestMemoryEstimateBoundsAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("counts allocations, and the race detector makes it slow; it has no concurrency to check")
	}
	photo := photoLike(640, 480, 11)
	convert := func(dst interface {
		image.Image
		Set(x, y int, c color.Color)
	}) image.Image {
		b := dst.Bounds()
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				dst.Set(x, y, photo.At(x, y))
			}
		}
		return dst
	}
	translucent := image.NewNRGBA(photo.Bounds())
	for i := range translucent.Pix {
		translucent.Pix[i] = photo.Pix[i]
		if i%4 == 3 {
			translucent.Pix[i] = 200
		}
	}
	pal := image.NewPaletted(photo.Bounds(), palette.Plan9)
	for i := range pal.Pix {
		pal.Pix[i] = uint8(i / 7)
	}
	var gifBuf bytes.Buffer
	if err := gif.Encode(&gifBuf, pal, nil); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		data []byte
	}{
		{"jpeg 4:2:0", encodeJPEG(t, photo, 90)},
		{"jpeg 4:2:0 6 MP", encodeJPEG(t, photoLike(2400, 1600, 13), 85)},
		{"jpeg 4:2:0 tall, oriented", withSegments(encodeJPEG(t, photoLike(400, 2400, 12), 90), exifSegment(exifTIFF(binary.BigEndian, 6, false)))},
		{"jpeg gray", encodeJPEG(t, convert(image.NewGray(photo.Bounds())), 90)},
		{"progressive jpeg 4:4:4 bomb", imagetest.Bomb(1500, 1200, false)},
		{"progressive jpeg cmyk bomb", imagetest.Bomb(1500, 1200, true)},
		{"wide progressive bomb", imagetest.Bomb(4000, 300, false)},
		{"png rgb", encodePNG(t, photo)},
		{"png translucent", encodePNG(t, translucent)},
		{"png 16-bit", encodePNG(t, convert(image.NewRGBA64(photo.Bounds())))},
		{"png gray", encodePNG(t, convert(image.NewGray(photo.Bounds())))},
		{"png paletted", encodePNG(t, pal)},
		{"gif", gifBuf.Bytes()},
		{"webp lossy", webpLossy},
		{"webp lossless", webpLossless},
		{"webp alpha", webpAlpha},
	}
	r := New(Options{MaxConcurrent: 1})
	for _, c := range cases {
		info, err := r.Probe(c.data)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if _, err := r.Process(context.Background(), c.data); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		runtime.ReadMemStats(&after)
		allocated := int64(after.TotalAlloc - before.TotalAlloc)
		t.Logf("%-30s %5dx%-5d estimate %9s, allocated %9s (%.2f)", c.name, info.Width, info.Height,
			mib(info.Memory), mib(allocated), float64(info.Memory)/float64(allocated))
		if info.Memory < allocated {
			t.Errorf("%s: estimate %d bytes, but Process allocated %d", c.name, info.Memory, allocated)
		}
	}
}

// TestBombsOverTheBudget: the bombs of an 80-megapixel frame are refused
// from their header, before anything is decoded.
func TestBombsOverTheBudget(t *testing.T) {
	r := New(Options{}) // 1 GiB
	for _, cmyk := range []bool{false, true} {
		bomb := imagetest.Bomb(8944, 8944, cmyk)
		if len(bomb) > 700<<10 {
			t.Fatalf("bomb of %d bytes, want a small file", len(bomb))
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := r.Process(context.Background(), bomb)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "decode memory budget") {
			t.Fatalf("cmyk=%v: %v, want ErrTooLarge naming the decode memory budget", cmyk, err)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 16<<20 {
			t.Errorf("cmyk=%v: refusing allocated %d bytes", cmyk, n)
		}
		info, err := New(Options{DecodeMemory: 4 << 30}).Probe(bomb)
		if err != nil {
			t.Fatal(err)
		}
		want := int64(8944*8944) * 15 // pixels × (3 samples + 12 bytes of coefficients)
		if cmyk {
			want = int64(8944*8944) * 24
		}
		if info.Memory < want {
			t.Errorf("cmyk=%v: estimate %s, under the decoder's own %s", cmyk, mib(info.Memory), mib(want))
		}
	}
}

// TestDecodeMemoryBudget runs more bombs at once than the budget holds:
// they all succeed, one at a time, and the memory charged never exceeds the
// budget.
func TestDecodeMemoryBudget(t *testing.T) {
	bomb := imagetest.Bomb(640, 640, false)
	probe, err := New(Options{}).Probe(bomb)
	if err != nil {
		t.Fatal(err)
	}
	budget := probe.Memory + probe.Memory/2 // room for one
	r := New(Options{DecodeMemory: budget, MaxConcurrent: 4})
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if n := r.MemoryInUse(); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			default:
				runtime.Gosched()
			}
		}
	}()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := r.Process(context.Background(), bomb); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	close(stop)
	<-sampled
	if p := peak.Load(); p > budget || p == 0 {
		t.Errorf("peak memory charged %d, budget %d", p, budget)
	}
	if n := r.MemoryInUse(); n != 0 {
		t.Errorf("%d bytes still charged after every Process returned", n)
	}

	// With the budget held, Process waits and gives up with its context.
	if err := r.memory.Acquire(context.Background(), budget); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := r.Process(ctx, bomb); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting for memory: %v", err)
	}
	r.memory.Release(budget)
	if _, err := r.Process(context.Background(), bomb); err != nil {
		t.Errorf("after release: %v", err)
	}
}
