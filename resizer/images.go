package resizer

import (
	"image"
	"image/color"
	"image/draw"

	"github.com/disintegration/imaging"
)

// The resizer works on three layouts, which the JPEG and PNG encoders also
// read without per-pixel interface calls: *image.YCbCr (JPEG and lossy WebP,
// never converted), *image.Gray (grayscale JPEG) and *image.RGBA
// (premultiplied; everything else, converted row by row during the first
// reduction). Resized Y'CbCr images are 4:2:0, whatever the source's ratio.

// isOpaque reports whether every pixel of img is fully opaque.
func isOpaque(img image.Image) bool {
	switch m := img.(type) {
	case *image.YCbCr, *image.Gray, *image.Gray16, *image.CMYK:
		return true
	case interface{ Opaque() bool }:
		return m.Opaque()
	}
	return false
}

// working returns img in a layout resize reads directly when that needs no
// copy: an opaque *image.NYCbCrA becomes its *image.YCbCr and an opaque
// *image.NRGBA is the same bytes as an *image.RGBA.
func working(img image.Image, opaque bool) image.Image {
	switch m := img.(type) {
	case *image.NYCbCrA:
		if opaque {
			return &m.YCbCr
		}
	case *image.NRGBA:
		if opaque {
			return &image.RGBA{Pix: m.Pix, Stride: m.Stride, Rect: m.Rect}
		}
	}
	return img
}

// resize returns the part r of img resampled to dw×dh with filter f, in
// img's layout (*image.YCbCr, *image.Gray) or else as *image.RGBA. When r is
// all of img and already dw×dh, img itself is returned (if it is one of the
// three layouts).
func resize(img image.Image, r image.Rectangle, dw, dh int, f filter) image.Image {
	if r == img.Bounds() && r.Dx() == dw && r.Dy() == dh {
		switch img.(type) {
		case *image.YCbCr, *image.Gray, *image.RGBA:
			return img
		}
	}
	switch m := img.(type) {
	case *image.YCbCr:
		return resizeYCbCr(m, r, dw, dh, f)
	case *image.Gray:
		p := plane{pix: m.Pix[m.PixOffset(r.Min.X, r.Min.Y):], w: r.Dx(), h: r.Dy(), stride: m.Stride, ch: 1}
		out := resample(rowSource{plane: p}, dw, dh, f)
		return &image.Gray{Pix: out.pix, Stride: out.stride, Rect: image.Rect(0, 0, dw, dh)}
	}
	out := resample(rgbaSource(img, r), dw, dh, f)
	return &image.RGBA{Pix: out.pix, Stride: out.stride, Rect: image.Rect(0, 0, dw, dh)}
}

// resizeYCbCr resamples the luma and both chroma planes separately, each
// from its own resolution, into a 4:2:0 image.
func resizeYCbCr(m *image.YCbCr, r image.Rectangle, dw, dh int, f filter) *image.YCbCr {
	hx, vy := chromaFactors(m.SubsampleRatio)
	// The chroma samples covering r.
	cw := (r.Max.X-1)/hx - r.Min.X/hx + 1
	chh := (r.Max.Y-1)/vy - r.Min.Y/vy + 1
	yp := plane{pix: m.Y[m.YOffset(r.Min.X, r.Min.Y):], w: r.Dx(), h: r.Dy(), stride: m.YStride, ch: 1}
	co := m.COffset(r.Min.X, r.Min.Y)
	cbp := plane{pix: m.Cb[co:], w: cw, h: chh, stride: m.CStride, ch: 1}
	crp := plane{pix: m.Cr[co:], w: cw, h: chh, stride: m.CStride, ch: 1}
	dcw, dch := (dw+1)/2, (dh+1)/2
	y := resample(rowSource{plane: yp}, dw, dh, f)
	cb := resample(rowSource{plane: cbp}, dcw, dch, f)
	cr := resample(rowSource{plane: crp}, dcw, dch, f)
	return &image.YCbCr{
		Y: y.pix, Cb: cb.pix, Cr: cr.pix,
		YStride: y.stride, CStride: cb.stride,
		SubsampleRatio: image.YCbCrSubsampleRatio420,
		Rect:           image.Rect(0, 0, dw, dh),
	}
}

// chromaFactors returns how many luma columns and rows share one chroma
// sample.
func chromaFactors(r image.YCbCrSubsampleRatio) (hx, vy int) {
	switch r {
	case image.YCbCrSubsampleRatio422:
		return 2, 1
	case image.YCbCrSubsampleRatio420:
		return 2, 2
	case image.YCbCrSubsampleRatio440:
		return 1, 2
	case image.YCbCrSubsampleRatio411:
		return 4, 1
	case image.YCbCrSubsampleRatio410:
		return 4, 2
	}
	return 1, 1
}

// rgbaSource reads the part r of img as premultiplied RGBA rows: directly
// for *image.RGBA, through a palette table for *image.Paletted, and through
// image/draw (which has fast paths for NRGBA, CMYK and more) otherwise.
func rgbaSource(img image.Image, r image.Rectangle) rowSource {
	w, h := r.Dx(), r.Dy()
	if m, ok := img.(*image.RGBA); ok {
		return rowSource{plane: plane{pix: m.Pix[m.PixOffset(r.Min.X, r.Min.Y):], w: w, h: h, stride: m.Stride, ch: 4}}
	}
	src := rowSource{plane: plane{w: w, h: h, ch: 4}}
	if m, ok := img.(*image.Paletted); ok {
		var lut [256][4]byte // indexes past the palette read as transparent
		for i, c := range m.Palette[:min(len(m.Palette), 256)] {
			p := color.RGBAModel.Convert(c).(color.RGBA)
			lut[i] = [4]byte{p.R, p.G, p.B, p.A}
		}
		src.convert = func(y int, buf []byte) {
			o := m.PixOffset(r.Min.X, r.Min.Y+y)
			for x, idx := range m.Pix[o : o+w] {
				copy(buf[4*x:4*x+4], lut[idx][:])
			}
		}
		return src
	}
	src.convert = func(y int, buf []byte) {
		row := &image.RGBA{Pix: buf, Stride: len(buf), Rect: image.Rect(0, 0, w, 1)}
		draw.Draw(row, row.Rect, img, image.Pt(r.Min.X, r.Min.Y+y), draw.Src)
	}
	return src
}

// orient applies an EXIF orientation (1..8) to img with imaging's
// transforms. The result is an *image.RGBA; an *image.RGBA input is passed
// to imaging disguised as NRGBA so its premultiplied bytes are moved, not
// converted.
func orient(img image.Image, orientation int) image.Image {
	if orientation < 2 || orientation > 8 {
		return img
	}
	in := img
	if m, ok := img.(*image.RGBA); ok {
		in = &image.NRGBA{Pix: m.Pix, Stride: m.Stride, Rect: m.Rect}
	}
	var out *image.NRGBA
	switch orientation {
	case 2:
		out = imaging.FlipH(in)
	case 3:
		out = imaging.Rotate180(in)
	case 4:
		out = imaging.FlipV(in)
	case 5:
		out = imaging.Transpose(in)
	case 6:
		out = imaging.Rotate270(in) // 90° clockwise
	case 7:
		out = imaging.Transverse(in)
	case 8:
		out = imaging.Rotate90(in) // 90° counter-clockwise
	}
	return &image.RGBA{Pix: out.Pix, Stride: out.Stride, Rect: out.Rect}
}

// webpFullRange rescales, in place, the Y'CbCr planes of a lossy WebP as
// golang.org/x/image/webp returns them. VP8 codes BT.601 limited range
// (Y' 16-235, Cb and Cr 16-240, as libwebp and browsers decode it), but
// the planes come back as an image.YCbCr, which Go reads as full range
// (JFIF): uncorrected, every WebP upload loses contrast and saturation (a
// pure red comes out as 238,14,13). Lossless WebPs decode to RGBA and are
// left alone.
func webpFullRange(img image.Image) {
	var m *image.YCbCr
	switch v := img.(type) {
	case *image.YCbCr:
		m = v
	case *image.NYCbCrA:
		m = &v.YCbCr
	default:
		return
	}
	var luma, chroma [256]uint8
	for i := range 256 {
		luma[i] = uint8(max(0, min(255, ((i-16)*255*2+219)/(2*219))))
		c := (i-128)*255*2 + 224*sign(i-128)
		chroma[i] = uint8(max(0, min(255, 128+c/(2*224))))
	}
	for i, v := range m.Y {
		m.Y[i] = luma[v]
	}
	for i, v := range m.Cb {
		m.Cb[i] = chroma[v]
	}
	for i, v := range m.Cr {
		m.Cr[i] = chroma[v]
	}
}

// sign returns -1, 0 or 1.
func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}
