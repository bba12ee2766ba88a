package resizer

import (
	"encoding/binary"
	"fmt"
)

// This file estimates, from an image's header alone, how much memory
// Process needs to decode and resize it. Process admits a decode only when
// the estimate fits in the decode memory budget (Options.DecodeMemory), so
// the estimate must be an upper bound of what the decoders really
// allocate; TestMemoryEstimateBoundsAllocations checks it against the
// bytes allocated by Process for every decoder path.
//
// What each decoder allocates, in bytes per pixel of the padded frame:
//
//	decoder                          image                  transient
//	JPEG, 1 component (gray)         1                      -
//	JPEG, 3 components (Y'CbCr)      1 per component sample -
//	JPEG, 3 components (RGB)         as Y'CbCr              + 4 (RGBA copy)
//	JPEG, 4 components (CMYK/YCCK)   1 per component sample + 4 (CMYK copy)
//	progressive JPEG                 as above               + 4 per component sample (int32 coefficients)
//	PNG gray / palette (<= 8 bits)   1                      2 rows
//	PNG gray 16 bits                 2
//	PNG truecolour, with alpha       4 (8 at 16 bits)
//	PNG interlaced                   as above               + the same again (the seven passes)
//	GIF (first frame)                1                      + 4 (the canvas when the frame is smaller)
//	WebP lossy                       1.5 (4:2:0, 16-pixel macroblocks)
//	WebP lossless                    4                      + 4 (colour-indexed packing)
//	WebP extended (alpha, ...)       1.5                    + 9 (a lossless alpha plane decoded as NRGBA)
//	HEIC (WebAssembly libheif)       36 in all, + 4 × the file (measured; see heifMemory)
//	AVIF (WebAssembly libavif)       72 in all, + 4 × the file (measured; see heifMemory)
//
// "Component sample" counts each component at its own sampling: a 4:2:0
// Y'CbCr frame has 1.5 samples per pixel, a 4:4:4 one 3, CMYK 4. So the
// worst JPEG, a progressive 4:4:4 CMYK frame, needs 4 + 16 + 4 = 24 bytes
// per pixel: 1.9 GB at 80 megapixels, from a file of a few hundred KB.
// Measured with Go 1.26's image/jpeg on the bombs of imagetest.Bomb
// (8944×8944, one DC scan): the 469 KB 4:4:4 one allocates 15.00 bytes
// per pixel (1.20 GB; peak RSS of a bare decode 1.12 GiB), the 625 KB CMYK
// one 24.00 (1.92 GB; peak RSS 1.80 GiB), as the table says.
//
// Resizing then holds the decoded image and adds the reduction to l: one
// intermediate of at most 4 bytes per sample of the source's width (or
// height) times l's height (or width), and l itself, then the smaller
// levels, their oriented copies and the encoders' buffers, bounded by
// resizeOverhead per output pixel plus a constant.

const (
	// jpegCoeffBytes is what image/jpeg keeps per sample of a progressive
	// frame: one int32 coefficient ([64]int32 per 8×8 block).
	jpegCoeffBytes = 4
	// resizeOverhead bounds the bytes per output pixel of the levels below
	// the first reduction: the level itself, its oriented copy and its
	// encoding (each at most 4 bytes per pixel), with room to spare.
	resizeOverhead = 12
	// fixedOverhead covers what does not grow with the image: encoder
	// state (a DEFLATE compressor is about 1 MB), row buffers, filter
	// weights and Huffman tables.
	fixedOverhead = 8 << 20
)

// estimateMemory returns the bytes Process needs, at most, to decode the
// image whose header is data (format f, frame w×h as stored) and resize it.
// It never returns less than fixedOverhead.
// withWebP adds the WebP encoders of every output (webpEncodeMemory).
//
// HEIC and AVIF are decoded in a WebAssembly module whose linear memory is
// dropped when the decode returns, keeping only the decoded image (at most
// 4 bytes per pixel): their decode peak does not overlap the resizing, so
// theirs is the larger of the two phases.
func estimateMemory(f Format, data []byte, jh *jpegHeader, w, h int, withWebP bool) int64 {
	after := resizeMemory(w, h)
	if withWebP {
		after += webpEncodeMemory(w, h, !opaqueFormat(f, data))
	}
	if f == HEIC || f == AVIF {
		return max(decodeMemory(f, data, jh, w, h), 4*int64(w)*int64(h)+after) + fixedOverhead
	}
	return decodeMemory(f, data, jh, w, h) + after + fixedOverhead
}

// opaqueFormat reports whether every image of format f is opaque, so its
// outputs are JPEG and lossy WebP: JPEG; and a lossy WebP without VP8X.
// Other formats may carry alpha and are charged for lossless WebP.
func opaqueFormat(f Format, data []byte) bool {
	return f == JPEG || f == WebP && len(data) >= 16 && string(data[12:16]) == "VP8 "
}

// webpEncodeMemory bounds what the WebP encoders of the four outputs of a
// w×h source allocate. libwebp runs compiled to WebAssembly, one module
// instance per encode whose linear memory grows by doubling; measured with
// Go 1.26 (github.com/gen2brain/webp v0.5.5, method 4) on noisy images, a
// lossy encode allocates about 8 MiB plus 67 bytes per pixel, a lossless
// one about 27 MiB plus 145 bytes per pixel. The constants below add a
// margin.
func webpEncodeMemory(w, h int, lossless bool) int64 {
	per, fixed := int64(72), int64(12<<20)
	if lossless {
		per, fixed = 160, 32<<20
	}
	var total int64
	for _, d := range Dimensions(w, h) {
		total += per*int64(d.X)*int64(d.Y) + fixed
	}
	return total
}

// decodeMemory returns the bytes the decoder of f allocates for a w×h
// frame, transients included (see the table above).
func decodeMemory(f Format, data []byte, jh *jpegHeader, w, h int) int64 {
	px := int64(w) * int64(h)
	switch f {
	case JPEG:
		return jpegMemory(jh, w, h)
	case PNG:
		return pngMemory(data, px)
	case GIF:
		return 5 * px
	case WebP:
		return webpMemory(data, w, h)
	case HEIC, AVIF:
		return heifMemory(f, len(data), w, h)
	}
	return 0
}

// jpegMemory follows image/jpeg's allocations: the component planes at
// the MCU-padded size (makeImg), the coefficients of a progressive frame
// (one [64]int32 block per 8×8 block of each component) and the RGBA or
// CMYK copy that RGB and 4-component frames are converted into.
func jpegMemory(jh *jpegHeader, w, h int) int64 {
	comps := jh.comps
	if len(comps) == 0 {
		// No frame header was found, yet DecodeConfig succeeded: assume
		// the worst frame the decoder accepts.
		comps = []jpegComponent{{h: 1, v: 1}, {h: 1, v: 1}, {h: 1, v: 1}, {h: 1, v: 1}}
	}
	var samples int64
	if len(comps) == 1 {
		// The decoder ignores the sampling factors of a single component.
		samples = 64 * ceilDiv(w, 8) * ceilDiv(h, 8)
	} else {
		h0, v0 := max(comps[0].h, 1), max(comps[0].v, 1)
		mxx, myy := ceilDiv(w, 8*h0), ceilDiv(h, 8*v0)
		for _, c := range comps {
			samples += 64 * mxx * int64(max(c.h, 1)) * myy * int64(max(c.v, 1))
		}
	}
	total := samples // the planes, 1 byte per sample
	if jh.sof == 0xC2 {
		total += jpegCoeffBytes * samples
	}
	px := int64(w) * int64(h)
	switch {
	case len(comps) == 4:
		total += 4 * px
	case len(comps) == 3 && jpegIsRGB(jh):
		total += 4 * px
	}
	return total
}

// jpegIsRGB reports whether image/jpeg converts a 3-component frame to
// RGBA rather than keeping it as Y'CbCr (its isRGB rule).
func jpegIsRGB(jh *jpegHeader) bool {
	switch {
	case jh.jfif:
		return false
	case jh.adobe && jh.adobeTransform == 0:
		return true
	}
	return len(jh.comps) == 3 && jh.comps[0].id == 'R' && jh.comps[1].id == 'G' && jh.comps[2].id == 'B'
}

// pngMemory reads the IHDR chunk (at a fixed place: the signature, then
// length, type and the 13 bytes of IHDR) for the bit depth, colour type and
// interlace method, and returns what image/png allocates.
//
//	offset  size  field
//	16      4     width
//	20      4     height
//	24      1     bit depth
//	25      1     colour type (0 gray, 2 truecolour, 3 palette, 4 gray+alpha, 6 truecolour+alpha)
//	28      1     interlace method (1 = Adam7)
func pngMemory(data []byte, px int64) int64 {
	if len(data) < 29 {
		return 8 * 2 * px // DecodeConfig succeeded: assume the worst
	}
	depth, ctype, interlaced := data[24], data[25], data[28] == 1
	var bpp int64
	switch {
	case ctype == 3 || ctype == 0 && depth <= 8:
		bpp = 1
	case ctype == 0:
		bpp = 2
	case depth == 16:
		bpp = 8
	default:
		bpp = 4
	}
	if interlaced {
		bpp *= 2
	}
	return bpp*px + 2*int64(binary.BigEndian.Uint32(data[16:20]))*8 // + two rows of up to 8 bytes per pixel
}

// webpMemory returns what golang.org/x/image/webp allocates, judged from
// the first chunk: "VP8 " (lossy), "VP8L" (lossless) or "VP8X" (extended:
// alpha, or any of the two).
func webpMemory(data []byte, w, h int) int64 {
	px := int64(w) * int64(h)
	lossy := 3 * ceilDiv(w, 16) * 16 * ceilDiv(h, 16) * 16 / 2
	if len(data) < 16 {
		return lossy + 9*px
	}
	switch string(data[12:16]) {
	case "VP8 ":
		return lossy
	case "VP8L":
		return 8 * px
	}
	return lossy + 9*px
}

// resizeMemory bounds what produce allocates for a w×h source (as stored)
// beside the decoded image: the first reduction's intermediate and output,
// then the smaller levels and the encoders (see the file comment).
func resizeMemory(w, h int) int64 {
	dims := Dimensions(w, h)
	l := dims[NumSizes-1]
	// The first reduction goes vertically first on planes (source width ×
	// l's height per plane, at most 4 bytes per pixel together) and
	// horizontally first on converted sources (l's width × source height,
	// 4 bytes per pixel), either way or neither.
	inter := 4 * max(int64(w)*int64(l.Y), int64(l.X)*int64(h))
	var out int64
	for _, d := range dims {
		out += int64(d.X) * int64(d.Y)
	}
	return inter + resizeOverhead*out
}

func ceilDiv(a, b int) int64 { return int64((a + b - 1) / b) }

// mib formats a byte count for a message: "1234.5 MiB".
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
