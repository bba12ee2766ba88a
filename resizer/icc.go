package resizer

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"io"
)

// This file carries the upload's ICC colour profile into the outputs, so
// that a Display P3 (or other wide-gamut) photo keeps its colours in
// browsers: the pixels are resized as they are, in the source's colour
// space, and the profile travels with them. Nothing else of the upload's
// metadata is copied (no EXIF, GPS or XMP).
//
// The rule: the profile is carried when the upload embeds an RGB profile
// (data colour space "RGB " at offset 16 of its header) of at most
// MaxICCBytes whose description does not name sRGB. Gray and CMYK
// profiles are dropped: the outputs are RGB (WebP always; a CMYK JPEG is
// converted), and a gray profile would not fit the WebP. An sRGB profile is
// what browsers assume without one, so it is dropped to keep small
// outputs small (a camera's sRGB profile is about 3 KB; Apple's Display
// P3 is 536 bytes). A larger profile is dropped too, and its colours
// shift as before.
//
// Where profiles are read from:
//
//	format  where                                           layout
//	JPEG    APP2 segments "ICC_PROFILE\0", seq (1 byte),    chunks joined in seq order
//	        count (1 byte), chunk
//	PNG     iCCP chunk: name (1-79 bytes), 0, method 0,     zlib-compressed profile
//	        compressed profile
//	WebP    ICCP chunk (in the VP8X extended format)        the profile
//	HEIF    colr property of type "prof" or "rICC"          the profile (heif.go)
//
// Where they are written:
//
//	JPEG    APP2 "ICC_PROFILE\0" segments right after SOI, at most
//	        65519 profile bytes each, numbered from 1
//	WebP    the file rewritten to the extended format: RIFF header,
//	        VP8X (flags: 0x20 ICC, 0x10 alpha; 3 reserved bytes; canvas
//	        width-1 and height-1, 24 bits little-endian each), ICCP, then
//	        the VP8 or VP8L chunk unchanged
//
// Outputs of images with transparency (PNG and lossless WebP) carry no
// profile.

// MaxICCBytes is the largest ICC profile carried into the outputs.
const MaxICCBytes = 16 << 10

// carriedICC returns the profile of the upload to carry into the outputs,
// or nil (see the rule above).
func carriedICC(f Format, data []byte) []byte {
	var icc []byte
	switch f {
	case JPEG:
		icc = jpegICC(data)
	case PNG:
		icc = pngICC(data)
	case WebP:
		icc = webpICC(data)
	case HEIC, AVIF:
		if hi, err := readHEIF(data); err == nil {
			icc = hi.icc
		}
	}
	if len(icc) < 132 || len(icc) > MaxICCBytes || string(icc[16:20]) != "RGB " || iccIsSRGB(icc) {
		return nil
	}
	return bytes.Clone(icc)
}

// iccIsSRGB reports whether the profile's description tag ('desc', as
// ASCII in a v2 profile or UTF-16 in a v4 'mluc') mentions sRGB.
//
// Profile header: 128 bytes, then the tag count (uint32 big-endian) and
// 12-byte entries: signature, offset, size.
func iccIsSRGB(icc []byte) bool {
	n := int(binary.BigEndian.Uint32(icc[128:]))
	for i := range n {
		e := 132 + 12*i
		if e+12 > len(icc) {
			return false
		}
		if string(icc[e:e+4]) != "desc" {
			continue
		}
		off, size := int(binary.BigEndian.Uint32(icc[e+4:])), int(binary.BigEndian.Uint32(icc[e+8:]))
		if off < 0 || size < 0 || off > len(icc) || size > len(icc)-off {
			return false
		}
		d := icc[off : off+size]
		return bytes.Contains(d, []byte("sRGB")) || bytes.Contains(d, []byte("s\x00R\x00G\x00B"))
	}
	return false
}

// jpegICC joins the ICC_PROFILE chunks of the APP2 segments before the
// first scan; nil when absent or inconsistent.
func jpegICC(data []byte) []byte {
	chunks := map[int][]byte{}
	count := 0
	pos := 2
	for pos+4 <= len(data) && data[pos] == 0xFF {
		m := data[pos+1]
		if m == 0xDA || m == 0xD9 {
			break
		}
		if m == 0xFF || m == 0x01 || m >= 0xD0 && m <= 0xD7 {
			pos++
			continue
		}
		n := int(binary.BigEndian.Uint16(data[pos+2:]))
		if n < 2 || pos+2+n > len(data) {
			break
		}
		p := data[pos+4 : pos+2+n]
		if m == 0xE2 && len(p) >= 14 && string(p[:12]) == "ICC_PROFILE\x00" {
			chunks[int(p[12])] = p[14:]
			count = int(p[13])
		}
		pos += 2 + n
	}
	if count == 0 || len(chunks) != count {
		return nil
	}
	var icc []byte
	for i := 1; i <= count; i++ {
		c, ok := chunks[i]
		if !ok {
			return nil
		}
		icc = append(icc, c...)
	}
	return icc
}

// pngICC returns the decompressed profile of the iCCP chunk, or nil.
// Chunks: length (uint32 big-endian), type, data, CRC.
func pngICC(data []byte) []byte {
	for pos := 8; pos+8 <= len(data); {
		n := int(binary.BigEndian.Uint32(data[pos:]))
		typ := string(data[pos+4 : pos+8])
		if n < 0 || pos+12+n > len(data) || typ == "IDAT" {
			return nil
		}
		if typ == "iCCP" {
			c := data[pos+8 : pos+8+n]
			z := bytes.IndexByte(c, 0)
			if z < 1 || z+2 > len(c) || c[z+1] != 0 {
				return nil
			}
			r, err := zlib.NewReader(bytes.NewReader(c[z+2:]))
			if err != nil {
				return nil
			}
			icc, err := io.ReadAll(io.LimitReader(r, MaxICCBytes+1))
			if err != nil {
				return nil
			}
			return icc
		}
		pos += 12 + n
	}
	return nil
}

// webpICC returns the payload of the ICCP chunk, or nil. Chunks: FourCC,
// size (uint32 little-endian), payload, a pad byte when size is odd.
func webpICC(data []byte) []byte {
	for pos := 12; pos+8 <= len(data); {
		n := int(binary.LittleEndian.Uint32(data[pos+4:]))
		if n < 0 || pos+8+n > len(data) {
			return nil
		}
		if string(data[pos:pos+4]) == "ICCP" {
			return data[pos+8 : pos+8+n]
		}
		pos += 8 + n + n&1
	}
	return nil
}

// jpegWithICC returns the JPEG data with icc inserted as APP2 segments
// after SOI.
func jpegWithICC(data, icc []byte) []byte {
	const chunk = 65519 // 65535 - 2 (length) - 12 (name) - 2 (seq, count)
	count := (len(icc) + chunk - 1) / chunk
	out := make([]byte, 0, len(data)+len(icc)+18*count)
	out = append(out, data[:2]...)
	for i := range count {
		c := icc[i*chunk : min(len(icc), (i+1)*chunk)]
		out = append(out, 0xFF, 0xE2)
		out = binary.BigEndian.AppendUint16(out, uint16(2+14+len(c)))
		out = append(out, "ICC_PROFILE\x00"...)
		out = append(out, byte(i+1), byte(count))
		out = append(out, c...)
	}
	return append(out, data[2:]...)
}

// webpWithICC rewrites a simple-format WebP (one VP8 or VP8L chunk) of
// w×h pixels to the extended format with an ICCP chunk. A file already in
// the extended format is returned unchanged.
func webpWithICC(data, icc []byte, w, h int, alpha bool) []byte {
	if len(data) < 20 || string(data[12:16]) == "VP8X" {
		return data
	}
	image := data[12:]
	vp8x := []byte("VP8X\x0a\x00\x00\x00")
	flags := byte(0x20)
	if alpha {
		flags |= 0x10
	}
	vp8x = append(vp8x, flags, 0, 0, 0)
	vp8x = append(vp8x, byte(w-1), byte((w-1)>>8), byte((w-1)>>16), byte(h-1), byte((h-1)>>8), byte((h-1)>>16))
	iccp := binary.LittleEndian.AppendUint32([]byte("ICCP"), uint32(len(icc)))
	iccp = append(iccp, icc...)
	if len(icc)%2 == 1 {
		iccp = append(iccp, 0)
	}
	body := append(append(append([]byte("WEBP"), vp8x...), iccp...), image...)
	out := binary.LittleEndian.AppendUint32([]byte("RIFF"), uint32(len(body)))
	return append(out, body...)
}
