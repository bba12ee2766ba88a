package resizer

import (
	"fmt"
	"math"
	"runtime"
	"sync"
)

// This file holds the resampler: separable, fixed-point convolution of 8-bit
// planes with 1 (a Y, Cb, Cr or gray plane) or 4 (premultiplied RGBA)
// interleaved channels. imaging.Resize works on float64 NRGBA, converts every
// input to it and reads columns pixel by pixel; for a 12 MP photo that alone
// costs more CPU than the whole budget, so the hot path is done here.

// filter is a resampling kernel.
type filter int

const (
	// lanczos3 is sharp, for the big first reduction from the original.
	lanczos3 filter = iota
	// catmullRom is cheaper (support 2) and nearly as sharp, for the
	// reductions between outputs.
	catmullRom
)

func (f filter) support() float64 {
	if f == lanczos3 {
		return 3
	}
	return 2
}

func (f filter) at(x float64) float64 {
	x = math.Abs(x)
	switch f {
	case lanczos3:
		if x >= 3 {
			return 0
		}
		return sinc(x) * sinc(x/3)
	default: // Catmull-Rom: the cubic with B = 0, C = 1/2.
		switch {
		case x < 1:
			return (3*x*x*x - 5*x*x + 2) / 2
		case x < 2:
			return (-x*x*x + 5*x*x - 8*x + 4) / 2
		}
		return 0
	}
}

func sinc(x float64) float64 {
	if x == 0 {
		return 1
	}
	x *= math.Pi
	return math.Sin(x) / x
}

// fracBits is the precision of the fixed-point weights: a weight of 1.0 is
// 1<<fracBits. 14 bits keep every sum of 8-bit samples within int32.
const fracBits = 14

// coeffs maps one axis of dst samples onto src samples: output i is
// sum(w[i*n+k] * src[start[i]+k]) for k < n, in fixed point.
type coeffs struct {
	n     int
	start []int
	w     []int32
}

// makeCoeffs computes the weights for resampling srcSize samples to dstSize
// samples, centre-aligned. When shrinking, the kernel is stretched by the
// ratio so it low-pass filters; the weights of each output sum to exactly
// 1<<fracBits, so flat areas (and an opaque alpha channel) stay exact.
func makeCoeffs(dstSize, srcSize int, f filter) coeffs {
	scale := float64(srcSize) / float64(dstSize)
	fscale := max(scale, 1)
	radius := f.support() * fscale
	// At most floor(2*radius)+1 integers lie within radius of a centre.
	n := min(int(2*radius)+1, srcSize)
	c := coeffs{n: n, start: make([]int, dstSize), w: make([]int32, dstSize*n)}
	tmp := make([]float64, n)
	for i := range dstSize {
		centre := (float64(i)+0.5)*scale - 0.5
		first := int(math.Ceil(centre - radius))
		last := int(math.Floor(centre + radius))
		first = max(first, 0)
		last = min(last, srcSize-1)
		// Place the window of n taps so it covers [first, last]; it always
		// can, because last-first+1 <= n.
		start := min(first, srcSize-n)
		c.start[i] = start
		var sum float64
		for k := range tmp {
			tmp[k] = 0
			if u := start + k; u >= first && u <= last {
				tmp[k] = f.at((float64(u) - centre) / fscale)
				sum += tmp[k]
			}
		}
		if sum == 0 { // degenerate: take the nearest sample
			k := min(max(int(math.Round(centre))-start, 0), n-1)
			tmp[k], sum = 1, 1
		}
		w := c.w[i*n : (i+1)*n]
		var total int32
		biggest := 0
		for k, v := range tmp {
			w[k] = int32(math.Round(v / sum * (1 << fracBits)))
			total += w[k]
			if w[k] > w[biggest] {
				biggest = k
			}
		}
		w[biggest] += 1<<fracBits - total
	}
	return c
}

// plane is an 8-bit raster of w×h pixels with ch interleaved channels, rows
// stride bytes apart.
type plane struct {
	pix          []byte
	w, h, stride int
	ch           int
}

func newPlane(w, h, ch int) plane {
	return plane{pix: make([]byte, w*h*ch), w: w, h: h, stride: w * ch, ch: ch}
}

func (p plane) row(y int) []byte {
	o := y * p.stride
	return p.pix[o : o+p.w*p.ch]
}

// rowSource is what a resample pass reads: either a plane, or rows produced
// on demand by convert (which fills buf, len w*ch, with row y). convert must
// be safe to call from several goroutines with distinct buffers.
type rowSource struct {
	plane   plane
	convert func(y int, buf []byte)
}

func (s rowSource) dims() (w, h, ch int) { return s.plane.w, s.plane.h, s.plane.ch }

// resample returns src resized to dw×dh with filter f. It never returns
// src's own pixels.
//
// Plane sources are resampled vertically first: the vertical pass
// accumulates whole rows and costs less per tap than the horizontal one, so
// it takes the larger share (it runs at the full source width). Converted
// sources go horizontally first, so each row is converted once, in order,
// and never kept at full size.
func resample(src rowSource, dw, dh int, f filter) plane {
	sw, sh, _ := src.dims()
	if dw <= 0 || dh <= 0 || sw <= 0 || sh <= 0 {
		panic(fmt.Sprintf("resizer: resample %dx%d to %dx%d", sw, sh, dw, dh))
	}
	if src.convert != nil {
		tmp := horizontal(src, dw, f)
		if dh == sh {
			return tmp
		}
		return verticalPass(tmp, dh, f)
	}
	tmp := src.plane
	if dh != sh {
		tmp = verticalPass(tmp, dh, f)
	}
	if dw != sw || dh == sh {
		// A width-preserving horizontal pass is a copy, which is needed
		// when nothing else allocated.
		return horizontal(rowSource{plane: tmp}, dw, f)
	}
	return tmp
}

// horizontal resamples (or, when the width is kept, copies or converts)
// every row of src to width dw.
func horizontal(src rowSource, dw int, f filter) plane {
	sw, sh, ch := src.dims()
	dst := newPlane(dw, sh, ch)
	var c coeffs
	if dw != sw {
		c = makeCoeffs(dw, sw, f)
	}
	parallel(sh, 64, func(lo, hi int) {
		var buf []byte
		if src.convert != nil {
			buf = make([]byte, sw*ch)
		}
		for y := lo; y < hi; y++ {
			in := buf
			if src.convert != nil {
				src.convert(y, buf)
			} else {
				in = src.plane.row(y)
			}
			switch {
			case dw == sw:
				copy(dst.row(y), in)
			case ch == 1:
				horizontal1(dst.row(y), in, &c)
			default:
				horizontal4(dst.row(y), in, &c)
			}
		}
	})
	return dst
}

// verticalPass resamples the columns of src to height dh.
func verticalPass(src plane, dh int, f filter) plane {
	dst := newPlane(src.w, dh, src.ch)
	c := makeCoeffs(dh, src.h, f)
	parallel(dh, 32, func(lo, hi int) {
		acc := make([]int32, src.w*src.ch)
		for y := lo; y < hi; y++ {
			vertical(dst.row(y), acc, src, y, &c, src.ch == 4)
		}
	})
	return dst
}

// horizontal1 resamples one row of a 1-channel plane.
func horizontal1(out, in []byte, c *coeffs) {
	n := c.n
	for x := range out {
		s := in[c.start[x]:][:n]
		w := c.w[x*n:][:n]
		var sum int32
		for k, v := range s {
			sum += int32(v) * w[k]
		}
		out[x] = clamp8(sum)
	}
}

// horizontal4 resamples one row of a 4-channel (premultiplied RGBA) plane.
func horizontal4(out, in []byte, c *coeffs) {
	n := c.n
	for x := 0; x < len(out)/4; x++ {
		s := in[4*c.start[x]:][:4*n]
		w := c.w[x*n:][:n]
		var r, g, b, a int32
		for k, wk := range w {
			p := s[4*k:][:4]
			r += int32(p[0]) * wk
			g += int32(p[1]) * wk
			b += int32(p[2]) * wk
			a += int32(p[3]) * wk
		}
		o := out[4*x:][:4]
		o[0], o[1], o[2], o[3] = clamp8(r), clamp8(g), clamp8(b), clamp8(a)
	}
}

// vertical computes output row y of the vertical pass from the rows of src,
// accumulating whole rows so memory is read sequentially. With premul set
// (4-channel RGBA) colour channels are clamped to alpha, which the negative
// lobes of the kernel could otherwise push above it.
func vertical(out []byte, acc []int32, src plane, y int, c *coeffs, premul bool) {
	clear(acc)
	n := c.n
	start := c.start[y]
	for k, wk := range c.w[y*n:][:n] {
		if wk == 0 {
			continue
		}
		row := src.row(start + k)
		a := acc[:len(row)]
		for i, v := range row {
			a[i] += int32(v) * wk
		}
	}
	o := out[:len(acc)]
	for i, v := range acc {
		o[i] = clamp8(v)
	}
	if premul {
		for i := 0; i+3 < len(o); i += 4 {
			p := o[i : i+4 : i+4]
			p[0], p[1], p[2] = min(p[0], p[3]), min(p[1], p[3]), min(p[2], p[3])
		}
	}
}

// clamp8 rounds a fixed-point sum to a byte.
func clamp8(v int32) byte {
	v = (v + 1<<(fracBits-1)) >> fracBits
	if uint32(v) > 255 {
		if v < 0 {
			return 0
		}
		return 255
	}
	return byte(v)
}

// parallel calls fn over [0, n) split into at most GOMAXPROCS ranges of at
// least grain items, concurrently, and waits. A panic in fn is re-raised in
// the caller's goroutine, where Process recovers it.
func parallel(n, grain int, fn func(lo, hi int)) {
	parts := min(runtime.GOMAXPROCS(0), n/grain)
	if parts <= 1 {
		fn(0, n)
		return
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		panicked any
	)
	for i := range parts {
		lo, hi := n*i/parts, n*(i+1)/parts
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if p := recover(); p != nil {
					mu.Lock()
					panicked = p
					mu.Unlock()
				}
			}()
			fn(lo, hi)
		}()
	}
	wg.Wait()
	if panicked != nil {
		panic(panicked)
	}
}
