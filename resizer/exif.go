package resizer

import (
	"encoding/binary"
	"fmt"
)

// jpegHeader is what scanJPEG learns from the marker segments before the
// first scan.
type jpegHeader struct {
	orientation int  // EXIF IFD0 Orientation, 1..8; 0 when absent or invalid
	sof         byte // the SOFn marker (0xC0..0xCF), 0 when none was seen
	// The frame, from the first SOFn: width, height and, per component,
	// its identifier and sampling factors.
	width, height int
	comps         []jpegComponent
	// jfif is set by an APP0 "JFIF" segment; adobe by an APP14 "Adobe"
	// segment, whose colour transform is adobeTransform (0 = none: RGB or
	// CMYK, 1 = YCbCr, 2 = YCCK).
	jfif, adobe    bool
	adobeTransform byte
}

// jpegComponent is one component of a JPEG frame header.
type jpegComponent struct {
	id   byte
	h, v int // horizontal and vertical sampling factors, 1..4
	tq   int // quantization table selector, 0..3
}

// scanJPEG walks the marker segments of a JPEG from SOI up to the first SOS
// (start of scan), reading the first APP1 "Exif" segment wherever it sits
// and the frame type. It is lenient: a malformed or truncated header simply
// ends the walk, and the decoder reports the damage.
//
// Layout: SOI (FF D8), then segments FF xx <uint16 big-endian length,
// including itself> <payload>; fill bytes FF may precede a marker; markers
// 01 and D0..D7 stand alone.
func scanJPEG(data []byte) jpegHeader {
	var h jpegHeader
	pos := 2 // after SOI
	for pos+1 < len(data) {
		if data[pos] != 0xFF {
			return h
		}
		for pos < len(data) && data[pos] == 0xFF {
			pos++ // fill bytes
		}
		if pos >= len(data) {
			return h
		}
		marker := data[pos]
		pos++
		switch {
		case marker == 0x01 || marker >= 0xD0 && marker <= 0xD7:
			continue // standalone markers
		case marker == 0xD9 || marker == 0xDA:
			return h // EOI or SOS: the header is over
		}
		if pos+2 > len(data) {
			return h
		}
		n := int(binary.BigEndian.Uint16(data[pos:]))
		if n < 2 || pos+n > len(data) {
			return h
		}
		payload := data[pos+2 : pos+n]
		pos += n
		switch {
		case marker == 0xE1 && h.orientation == 0 && len(payload) >= 6 &&
			string(payload[:6]) == "Exif\x00\x00":
			h.orientation = exifOrientation(payload[6:])
		case marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC:
			if h.sof == 0 {
				h.sof = marker
				h.parseSOF(payload)
			}
		case marker == 0xE0 && len(payload) >= 5 && string(payload[:5]) == "JFIF\x00":
			h.jfif = true
		case marker == 0xEE && len(payload) >= 12 && string(payload[:5]) == "Adobe":
			h.adobe, h.adobeTransform = true, payload[11]
		}
	}
	return h
}

// parseSOF reads a frame header payload:
//
//	offset  size  field
//	0       1     sample precision (bits)
//	1       2     height (uint16 big-endian)
//	3       2     width (uint16 big-endian)
//	5       1     number of components n
//	6+3i    1     component i identifier
//	7+3i    1     component i sampling factors, horizontal<<4 | vertical
//	8+3i    1     component i quantization table
//
// A truncated payload leaves the frame unknown; the decoder reports it.
func (h *jpegHeader) parseSOF(p []byte) {
	if len(p) < 6 || len(p) < 6+3*int(p[5]) {
		return
	}
	h.height = int(binary.BigEndian.Uint16(p[1:]))
	h.width = int(binary.BigEndian.Uint16(p[3:]))
	for i := range int(p[5]) {
		c := p[6+3*i:]
		h.comps = append(h.comps, jpegComponent{id: c[0], h: int(c[1] >> 4), v: int(c[1] & 0x0F), tq: int(c[2] & 3)})
	}
}

// unsupportedSOF names the JPEG coding process of an SOFn marker that Go's
// image/jpeg cannot decode, or returns "" for baseline, extended sequential
// and progressive Huffman coding (SOF0, SOF1, SOF2).
func unsupportedSOF(sof byte) string {
	switch sof {
	case 0, 0xC0, 0xC1, 0xC2:
		return ""
	case 0xC3:
		return "lossless JPEG (SOF3)"
	case 0xC5, 0xC6, 0xC7:
		return fmt.Sprintf("hierarchical JPEG (SOF%d)", sof-0xC0)
	}
	return fmt.Sprintf("arithmetic-coded JPEG (SOF%d)", sof-0xC0)
}

// exifOrientation returns the Orientation tag (0x0112) of IFD0 in a TIFF
// structure (the APP1 payload after "Exif\0\0"), or 0 when it is absent,
// malformed or outside 1..8. Every offset is bounds-checked.
//
// TIFF: byte order "II" (little-endian) or "MM" (big-endian), uint16 42,
// uint32 offset of IFD0; an IFD is a uint16 entry count followed by 12-byte
// entries: tag uint16, type uint16, count uint32, value or offset (4 bytes;
// a single SHORT sits in its first two bytes).
func exifOrientation(tiff []byte) int {
	if len(tiff) < 8 {
		return 0
	}
	var bo binary.ByteOrder
	switch string(tiff[:2]) {
	case "II":
		bo = binary.LittleEndian
	case "MM":
		bo = binary.BigEndian
	default:
		return 0
	}
	if bo.Uint16(tiff[2:]) != 42 {
		return 0
	}
	ifd := uint64(bo.Uint32(tiff[4:]))
	if ifd < 8 || ifd+2 > uint64(len(tiff)) {
		return 0
	}
	count := uint64(bo.Uint16(tiff[ifd:]))
	entries := tiff[ifd+2:]
	for i := uint64(0); i < count && 12*(i+1) <= uint64(len(entries)); i++ {
		e := entries[12*i : 12*(i+1)]
		if bo.Uint16(e[0:]) != 0x0112 {
			continue
		}
		const typeShort, typeLong = 3, 4
		var v uint32
		switch bo.Uint16(e[2:]) {
		case typeShort:
			v = uint32(bo.Uint16(e[8:]))
		case typeLong:
			v = bo.Uint32(e[8:])
		default:
			return 0
		}
		if bo.Uint32(e[4:]) != 1 || v < 1 || v > 8 {
			return 0
		}
		return int(v)
	}
	return 0
}
