// Package thumbhash owns the ThumbHash image placeholder: a hash of about
// 25 bytes from which a blurred likeness of a photo, with its average
// colour, aspect ratio and alpha, is painted while the real image loads.
//
// It implements the published algorithm by Evan Wallace
// (https://evanw.github.io/thumbhash/), bit for bit compatible with its
// reference JavaScript encoder and decoder, so a hash made here is
// rendered by the reference decoder in the browser.
//
// # Layout
//
// Little-endian bit fields:
//
//	bytes  bits    field
//	0..2   0-5     L DC, round(63·l_dc)
//	       6-11    P DC, round(31.5 + 31.5·p_dc)
//	       12-17   Q DC, round(31.5 + 31.5·q_dc)
//	       18-22   L AC scale, round(31·l_scale)
//	       23      has alpha
//	3..4   0-2     the shorter side's L component count (ly if landscape, else lx)
//	       3-8     P AC scale, round(63·p_scale)
//	       9-14    Q AC scale, round(63·q_scale)
//	       15      landscape (width > height)
//	5      0-3     A DC, round(15·a_dc)        (only with alpha)
//	       4-7     A AC scale, round(15·a_scale) (only with alpha)
//	then           4-bit AC factors, low nibble first: L, P (5), Q (5),
//	               then A (14, only with alpha)
//
// L is luminance (r+g+b)/3, P yellow-blue (r+g)/2-b, Q red-green r-g, A
// alpha, each as DCT coefficients of the image composited over its
// average colour.
package thumbhash

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"math"
)

// MaxSide is the largest width or height Encode accepts; scale images down
// to fit MaxSide×MaxSide first.
const MaxSide = 100

// round is JavaScript's Math.round, which the reference uses: halves go up.
func round(x float64) int { return int(math.Floor(x + 0.5)) }

// Encode returns the ThumbHash of img, which must be at most MaxSide
// pixels on each side and at least 1.
func Encode(img image.Image) ([]byte, error) {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if w < 1 || h < 1 || w > MaxSide || h > MaxSide {
		return nil, fmt.Errorf("thumbhash: image is %dx%d, want 1..%d on each side", w, h, MaxSide)
	}
	rgba, ok := img.(*image.NRGBA)
	if !ok || rgba.Rect.Min != (image.Point{}) {
		rgba = image.NewNRGBA(image.Rect(0, 0, w, h))
		draw.Draw(rgba, rgba.Rect, img, b.Min, draw.Src)
	}
	return encodeNRGBA(w, h, rgba), nil
}

// channel is one colour channel's DCT: its DC term, its AC terms scaled to
// 0..1 and the scale.
type channel struct {
	dc    float64
	ac    []float64
	scale float64
}

func encodeNRGBA(w, h int, img *image.NRGBA) []byte {
	n := w * h
	pix := func(i int) []uint8 {
		x, y := i%w, i/w
		o := y*img.Stride + 4*x
		return img.Pix[o : o+4]
	}
	// The average colour, weighted by alpha.
	var avgR, avgG, avgB, avgA float64
	for i := range n {
		p := pix(i)
		alpha := float64(p[3]) / 255
		avgR += alpha / 255 * float64(p[0])
		avgG += alpha / 255 * float64(p[1])
		avgB += alpha / 255 * float64(p[2])
		avgA += alpha
	}
	if avgA > 0 {
		avgR, avgG, avgB = avgR/avgA, avgG/avgA, avgB/avgA
	}
	hasAlpha := avgA < float64(n)
	lLimit := 7
	if hasAlpha {
		lLimit = 5 // fewer luminance terms to leave room for alpha
	}
	lx := max(1, round(float64(lLimit*w)/float64(max(w, h))))
	ly := max(1, round(float64(lLimit*h)/float64(max(w, h))))

	l, p, q, a := make([]float64, n), make([]float64, n), make([]float64, n), make([]float64, n)
	for i := range n {
		px := pix(i)
		alpha := float64(px[3]) / 255
		r := avgR*(1-alpha) + alpha/255*float64(px[0])
		g := avgG*(1-alpha) + alpha/255*float64(px[1])
		bl := avgB*(1-alpha) + alpha/255*float64(px[2])
		l[i] = (r + g + bl) / 3
		p[i] = (r+g)/2 - bl
		q[i] = r - g
		a[i] = alpha
	}

	encode := func(ch []float64, nx, ny int) channel {
		var c channel
		fx := make([]float64, w)
		for cy := range ny {
			for cx := 0; cx*ny < nx*(ny-cy); cx++ {
				for x := range w {
					fx[x] = math.Cos(math.Pi / float64(w) * float64(cx) * (float64(x) + 0.5))
				}
				var f float64
				for y := range h {
					fy := math.Cos(math.Pi / float64(h) * float64(cy) * (float64(y) + 0.5))
					for x := range w {
						f += ch[x+y*w] * fx[x] * fy
					}
				}
				f /= float64(n)
				if cx > 0 || cy > 0 {
					c.ac = append(c.ac, f)
					c.scale = max(c.scale, math.Abs(f))
				} else {
					c.dc = f
				}
			}
		}
		if c.scale > 0 {
			for i := range c.ac {
				c.ac[i] = 0.5 + 0.5/c.scale*c.ac[i]
			}
		}
		return c
	}
	lc := encode(l, max(3, lx), max(3, ly))
	pc := encode(p, 3, 3)
	qc := encode(q, 3, 3)
	var ac channel
	if hasAlpha {
		ac = encode(a, 5, 5)
	}

	landscape := w > h
	header24 := round(63*lc.dc) | round(31.5+31.5*pc.dc)<<6 | round(31.5+31.5*qc.dc)<<12 | round(31*lc.scale)<<18
	if hasAlpha {
		header24 |= 1 << 23
	}
	short := lx
	if landscape {
		short = ly
	}
	header16 := short | round(63*pc.scale)<<3 | round(63*qc.scale)<<9
	if landscape {
		header16 |= 1 << 15
	}
	hash := []byte{byte(header24), byte(header24 >> 8), byte(header24 >> 16), byte(header16), byte(header16 >> 8)}
	acs := [][]float64{lc.ac, pc.ac, qc.ac}
	if hasAlpha {
		hash = append(hash, byte(round(15*ac.dc)|round(15*ac.scale)<<4))
		acs = append(acs, ac.ac)
	}
	start, index := len(hash), 0
	for _, list := range acs {
		for _, f := range list {
			at := start + index>>1
			for len(hash) <= at {
				hash = append(hash, 0)
			}
			hash[at] |= byte(round(15*f) << ((index & 1) << 2))
			index++
		}
	}
	return hash
}

// ErrShort is returned by the decoding functions for a hash too short to
// hold its header and factors.
var ErrShort = errors.New("thumbhash: hash too short")

// header is the decoded constant part of a hash.
type header struct {
	lDC, pDC, qDC, lScale, pScale, qScale, aDC, aScale float64
	hasAlpha, landscape                                bool
	lx, ly                                             int
}

func readHeader(hash []byte) (header, error) {
	if len(hash) < 5 {
		return header{}, ErrShort
	}
	h24 := int(hash[0]) | int(hash[1])<<8 | int(hash[2])<<16
	h16 := int(hash[3]) | int(hash[4])<<8
	hd := header{
		lDC:       float64(h24&63) / 63,
		pDC:       float64(h24>>6&63)/31.5 - 1,
		qDC:       float64(h24>>12&63)/31.5 - 1,
		lScale:    float64(h24>>18&31) / 31,
		hasAlpha:  h24>>23 != 0,
		pScale:    float64(h16>>3&63) / 63,
		qScale:    float64(h16>>9&63) / 63,
		landscape: h16>>15 != 0,
		aDC:       1,
	}
	long := 7
	if hd.hasAlpha {
		long = 5
		if len(hash) < 6 {
			return header{}, ErrShort
		}
		hd.aDC = float64(hash[5]&15) / 15
		hd.aScale = float64(hash[5]>>4) / 15
	}
	if hd.landscape {
		hd.lx, hd.ly = long, h16&7
	} else {
		hd.lx, hd.ly = h16&7, long
	}
	return hd, nil
}

// AspectRatio returns the approximate width/height ratio the hash records.
func AspectRatio(hash []byte) (float64, error) {
	hd, err := readHeader(hash)
	if err != nil {
		return 0, err
	}
	if hd.ly == 0 {
		return 0, fmt.Errorf("thumbhash: hash records a zero height")
	}
	return float64(hd.lx) / float64(hd.ly), nil
}

// AverageColor returns the average colour the hash records.
func AverageColor(hash []byte) (color.NRGBA, error) {
	hd, err := readHeader(hash)
	if err != nil {
		return color.NRGBA{}, err
	}
	r, g, b := toRGB(hd.lDC, hd.pDC, hd.qDC)
	return color.NRGBA{R: unit(r), G: unit(g), B: unit(b), A: unit(hd.aDC)}, nil
}

func toRGB(l, p, q float64) (r, g, b float64) {
	b = l - 2.0/3*p
	r = (3*l - b + q) / 2
	g = r - q
	return r, g, b
}

// unit maps 0..1 to 0..255, clamping and truncating as the reference does.
func unit(v float64) uint8 { return uint8(max(0, 255*min(1, v))) }

// Decode paints the placeholder of hash: an image of at most 32 pixels on
// its longer side with the recorded aspect ratio.
func Decode(hash []byte) (*image.NRGBA, error) {
	hd, err := readHeader(hash)
	if err != nil {
		return nil, err
	}
	if hd.lx == 0 || hd.ly == 0 {
		return nil, fmt.Errorf("thumbhash: hash records a zero side")
	}
	lx, ly := max(3, hd.lx), max(3, hd.ly)
	start := 5
	if hd.hasAlpha {
		start = 6
	}
	index := 0
	var short bool
	read := func(nx, ny int, scale float64) []float64 {
		var ac []float64
		for cy := range ny {
			cx := 0
			if cy == 0 {
				cx = 1
			}
			for ; cx*ny < nx*(ny-cy); cx++ {
				at := start + index>>1
				if at >= len(hash) {
					short = true
					return ac
				}
				v := int(hash[at]) >> ((index & 1) << 2) & 15
				ac = append(ac, (float64(v)/7.5-1)*scale)
				index++
			}
		}
		return ac
	}
	lAC := read(lx, ly, hd.lScale)
	pAC := read(3, 3, hd.pScale*1.25)
	qAC := read(3, 3, hd.qScale*1.25)
	var aAC []float64
	if hd.hasAlpha {
		aAC = read(5, 5, hd.aScale)
	}
	if short {
		return nil, ErrShort
	}

	ratio := float64(hd.lx) / float64(hd.ly)
	w, h := 32, round(32/ratio)
	if ratio <= 1 {
		w, h = round(32*ratio), 32
	}
	w, h = max(w, 1), max(h, 1)
	out := image.NewNRGBA(image.Rect(0, 0, w, h))
	nfx, nfy := max(lx, 3), max(ly, 3)
	if hd.hasAlpha {
		nfx, nfy = max(lx, 5), max(ly, 5)
	}
	fx, fy := make([]float64, nfx), make([]float64, nfy)
	for y := range h {
		for x := range w {
			l, p, q, a := hd.lDC, hd.pDC, hd.qDC, hd.aDC
			for cx := range fx {
				fx[cx] = math.Cos(math.Pi / float64(w) * (float64(x) + 0.5) * float64(cx))
			}
			for cy := range fy {
				fy[cy] = math.Cos(math.Pi / float64(h) * (float64(y) + 0.5) * float64(cy))
			}
			j := 0
			for cy := range ly {
				cx := 0
				if cy == 0 {
					cx = 1
				}
				for fy2 := fy[cy] * 2; cx*ly < lx*(ly-cy); cx++ {
					l += lAC[j] * fx[cx] * fy2
					j++
				}
			}
			j = 0
			for cy := range 3 {
				cx := 0
				if cy == 0 {
					cx = 1
				}
				for fy2 := fy[cy] * 2; cx < 3-cy; cx++ {
					f := fx[cx] * fy2
					p += pAC[j] * f
					q += qAC[j] * f
					j++
				}
			}
			if hd.hasAlpha {
				j = 0
				for cy := range 5 {
					cx := 0
					if cy == 0 {
						cx = 1
					}
					for fy2 := fy[cy] * 2; cx < 5-cy; cx++ {
						a += aAC[j] * fx[cx] * fy2
						j++
					}
				}
			}
			r, g, b := toRGB(l, p, q)
			o := y*out.Stride + 4*x
			out.Pix[o], out.Pix[o+1], out.Pix[o+2], out.Pix[o+3] = unit(r), unit(g), unit(b), unit(a)
		}
	}
	return out, nil
}
