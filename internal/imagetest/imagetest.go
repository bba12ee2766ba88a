// Package imagetest holds the image helpers that the resizer's and the
// gateway's tests share: a marked test image, what a camera stores for an
// EXIF orientation, colour checks, an image difference and a PNG metadata
// check. Only tests import it (the layering test enforces that).
package imagetest

import (
	"encoding/binary"
	"image"
	"image/color"

	"github.com/disintegration/imaging"
)

// Marked returns an upright w×h grey image with a red block at the top left
// and a green block at the top right, each w/frac × h/frac.
func Marked(w, h, frac int) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			c := color.RGBA{100, 100, 110, 255}
			switch {
			case y < h/frac && x < w/frac:
				c = color.RGBA{230, 20, 20, 255}
			case y < h/frac && x >= w-w/frac:
				c = color.RGBA{20, 200, 20, 255}
			}
			m.SetRGBA(x, y, c)
		}
	}
	return m
}

// StoredAs returns what a camera stores for an upright image shown with
// the given EXIF orientation: the inverse of the display transform.
func StoredAs(upright image.Image, orientation int) image.Image {
	switch orientation {
	case 2:
		return imaging.FlipH(upright)
	case 3:
		return imaging.Rotate180(upright)
	case 4:
		return imaging.FlipV(upright)
	case 5:
		return imaging.Transpose(upright)
	case 6:
		return imaging.Rotate90(upright) // shown rotated 90° clockwise
	case 7:
		return imaging.Transverse(upright)
	case 8:
		return imaging.Rotate270(upright)
	}
	return upright
}

// IsRed reports whether c is the red of Marked's left block, after lossy
// compression.
func IsRed(c color.Color) bool {
	r, g, b, _ := c.RGBA()
	return r>>8 > 180 && g>>8 < 80 && b>>8 < 80
}

// IsGreen reports whether c is the green of Marked's right block, after
// lossy compression.
func IsGreen(c color.Color) bool {
	r, g, b, _ := c.RGBA()
	return r>>8 < 80 && g>>8 > 150 && b>>8 < 80
}

// MeanAbsDiff returns the mean absolute difference per channel (0..255)
// of two images, or 255 when their sizes differ.
func MeanAbsDiff(a, b image.Image) float64 {
	if a.Bounds() != b.Bounds() {
		return 255
	}
	var sum, n float64
	r := a.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			r1, g1, b1, _ := a.At(x, y).RGBA()
			r2, g2, b2, _ := b.At(x, y).RGBA()
			sum += absDiff(r1, r2) + absDiff(g1, g2) + absDiff(b1, b2)
			n += 3
		}
	}
	return sum / n / 257
}

func absDiff(a, b uint32) float64 {
	if a > b {
		return float64(a - b)
	}
	return float64(b - a)
}

// PNGMetadata names the first PNG chunk that is not pixels ("a tEXt
// chunk"), "a malformed file", or "" when there is none.
func PNGMetadata(data []byte) string {
	for pos := 8; pos+8 <= len(data); {
		n := int(binary.BigEndian.Uint32(data[pos:]))
		switch typ := string(data[pos+4 : pos+8]); typ {
		case "IHDR", "PLTE", "tRNS", "IDAT":
		case "IEND":
			return ""
		default:
			return "a " + typ + " chunk"
		}
		pos += 12 + n
	}
	return "a malformed file"
}

// Bomb returns a decompression bomb: a small progressive JPEG of w×h
// pixels (at most 65535 each) whose every block is flat grey. Each
// component is sampled 4:4:4, so image/jpeg keeps 4 bytes of coefficients
// and 1 byte of pixels per sample: 15 bytes per pixel for 3 components, 24
// with cmyk (4 components, Adobe APP14 without transform, converted to a
// CMYK copy). The file holds one DC scan of one bit per block, so an
// 8944×8944 bomb is 469 KB and asks for 1.2 GB (1.9 GB with cmyk).
func Bomb(w, h int, cmyk bool) []byte {
	n := 3
	if cmyk {
		n = 4
	}
	seg := func(b []byte, marker byte, payload ...byte) []byte {
		b = append(b, 0xFF, marker)
		b = binary.BigEndian.AppendUint16(b, uint16(2+len(payload)))
		return append(b, payload...)
	}
	b := []byte{0xFF, 0xD8} // SOI
	if cmyk {
		// APP14 "Adobe": version 100, flags 0, 0, colour transform 0.
		b = seg(b, 0xEE, 'A', 'd', 'o', 'b', 'e', 0, 100, 0, 0, 0, 0, 0)
	}
	dqt := make([]byte, 65) // table 0, 8-bit, every step 1
	for i := 1; i < len(dqt); i++ {
		dqt[i] = 1
	}
	b = seg(b, 0xDB, dqt...)
	sof := []byte{8, byte(h >> 8), byte(h), byte(w >> 8), byte(w), byte(n)}
	for i := range n {
		sof = append(sof, byte(i+1), 0x11, 0) // id, 1×1 sampling, table 0
	}
	b = seg(b, 0xC2, sof...) // SOF2: progressive Huffman
	// DC table 0 with a single code, "0" (one bit), for difference
	// category 0: every block's DC stays 0.
	dht := append([]byte{0x00, 1}, make([]byte, 15)...)
	b = seg(b, 0xC4, append(dht, 0)...)
	sos := []byte{byte(n)}
	for i := range n {
		sos = append(sos, byte(i+1), 0x00)
	}
	b = seg(b, 0xDA, append(sos, 0, 0, 0)...) // Ss=0, Se=0, Ah=Al=0: DC first
	bits := ((w + 7) / 8) * ((h + 7) / 8) * n
	b = append(b, make([]byte, bits/8)...)
	if r := bits % 8; r != 0 {
		b = append(b, 0xFF>>r) // the last bits, padded with ones
	}
	return append(b, 0xFF, 0xD9) // EOI
}
