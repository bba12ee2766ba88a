package resizer

import "encoding/binary"

// This file keeps an upload's own JPEG data as an output when re-encoding
// it could only add bytes and a generation of loss.
//
// The rule: a size (s, m or l; never the t crop) is the upload's own
// compressed data when all of these hold, else it is re-encoded:
//
//   - the upload is a baseline or progressive Huffman JPEG of 1 (gray) or
//     3 (Y'CbCr, no Adobe APP14 segment) components;
//   - its EXIF orientation is 1 or absent (turning it upright without
//     decoding needs a DCT-domain transcoder, which Go does not have, so
//     an oriented upload is re-encoded);
//   - it already fits the size's box, so that size has its pixels exactly;
//   - its quantisation is at least as coarse as JPEGQuality's: the sum of
//     each component's quantisation table is at least the sum of the
//     standard (IJG) table scaled to JPEGQuality, which is what
//     image/jpeg writes, luminance for the first component and
//     chrominance for the others;
//   - and the stripped upload is smaller than the re-encoding.
//
// The upload's data is stripped of every APPn and COM segment (EXIF, GPS,
// XMP, JFIF, ICC, comments, MPF) and of anything after EOI (an Ultra HDR
// gain map, junk); the ICC profile is then added back by the rule of
// icc.go, like every other JPEG output.
//
// Segments walked (as scanJPEG): SOI, then FF xx <uint16 length> payload;
// after each SOS, entropy-coded data up to the next marker that is not a
// stuffed FF 00 or a restart marker FF D0..D7; EOI (FF D9) ends the file.
// DQT payload: per table, a byte Pq<<4|Tq, then 64 entries of 1 byte
// (Pq = 0) or 2 bytes big-endian (Pq = 1).

// stdQuant is the sum of the 64 entries of the IJG luminance (0) and
// chrominance (1) tables scaled to quality q as image/jpeg scales them.
func stdQuant(q int) [2]int {
	lum := [64]int{16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
		14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
		18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
		49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99}
	chr := [64]int{17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
		24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
		99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
		99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99}
	scale := 200 - 2*q
	if q < 50 {
		scale = 5000 / q
	}
	var sums [2]int
	for i, t := range [2][64]int{lum, chr} {
		for _, v := range t {
			sums[i] += min(255, max(1, (v*scale+50)/100))
		}
	}
	return sums
}

// strippedJPEG returns the upload with every APPn and COM segment and
// everything after EOI removed, if it may stand for a size that it fits
// (see the rule above, but for the box and the size comparison); nil
// otherwise.
func strippedJPEG(data []byte, jh *jpegHeader) []byte {
	if jh.orientation > 1 || jh.adobe || jh.sof > 0xC2 || len(jh.comps) != 1 && len(jh.comps) != 3 {
		return nil
	}
	out := []byte{0xFF, 0xD8}
	var sums [4]int
	var have [4]bool
	pos := 2
	for {
		if pos+2 > len(data) || data[pos] != 0xFF {
			return nil
		}
		marker := data[pos+1]
		if marker == 0xFF {
			pos++ // fill byte
			continue
		}
		if marker == 0xD9 {
			out = append(out, 0xFF, 0xD9)
			break
		}
		if pos+4 > len(data) {
			return nil
		}
		n := int(binary.BigEndian.Uint16(data[pos+2:]))
		end := pos + 2 + n
		if n < 2 || end > len(data) {
			return nil
		}
		switch {
		case marker >= 0xE0 && marker <= 0xEF, marker == 0xFE:
			// metadata: dropped
		case marker == 0xDB:
			p := data[pos+4 : end]
			for len(p) > 0 {
				size := 1 + 64
				if p[0]>>4 == 1 {
					size = 1 + 128
				}
				if len(p) < size {
					return nil
				}
				tq, sum := int(p[0]&3), 0
				for i := range 64 {
					if p[0]>>4 == 1 {
						sum += int(binary.BigEndian.Uint16(p[1+2*i:]))
					} else {
						sum += int(p[1+i])
					}
				}
				sums[tq], have[tq] = sum, true
				p = p[size:]
			}
			out = append(out, data[pos:end]...)
		default:
			out = append(out, data[pos:end]...)
		}
		pos = end
		if marker != 0xDA {
			continue
		}
		// Entropy-coded data up to the next real marker.
		start := pos
		for pos+1 < len(data) && !(data[pos] == 0xFF && data[pos+1] != 0 && (data[pos+1] < 0xD0 || data[pos+1] > 0xD7)) {
			pos++
		}
		if pos+1 >= len(data) {
			return nil
		}
		out = append(out, data[start:pos]...)
	}
	std := stdQuant(JPEGQuality)
	for i, c := range jh.comps {
		want := std[min(i, 1)]
		if !have[c.tq] || sums[c.tq] < want {
			return nil
		}
	}
	return out
}
