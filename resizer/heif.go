package resizer

import (
	"encoding/binary"
	"fmt"
)

// This file reads what Probe needs from a HEIF container (HEIC and AVIF
// are both HEIF, ISO/IEC 23008-12, on the ISO base media file format)
// without decoding anything: the brand, the primary item's image spatial
// extents (ispe), its rotation (irot) and mirror (imir), and its ICC
// profile (colr of type prof), so that a HEIC or AVIF bomb is refused by
// its header like any other format.
//
// A box is:
//
//	offset  size  field
//	0       4     size (uint32 big-endian, including this header;
//	              1 = a uint64 size follows the type, 0 = to the end)
//	4       4     type (four characters)
//	8       8     largesize (only when size = 1)
//	...           payload; a "full box" starts it with version (1 byte)
//	              and flags (3 bytes)
//
// The boxes read, under the top-level meta (a full box):
//
//	box        payload read
//	ftyp       major brand (4), minor version (4), compatible brands (4 each)
//	pitm       v0: item_ID uint16; v1: item_ID uint32
//	iprp/ipco  the property boxes, numbered from 1 in order
//	ispe       full box, then image_width uint32, image_height uint32
//	irot       angle = byte0 & 3, anticlockwise in units of 90°
//	imir       axis = byte0 & 1 (0 vertical axis: left-right flip)
//	colr       colour_type (4): "prof" or "rICC" then an ICC profile
//	ipma       full box; entry_count uint32; per entry item_ID (uint16, or
//	           uint32 when version ≥ 1), association_count uint8, then per
//	           association 1 byte (flags&1 = 0) or 2 bytes (flags&1 = 1):
//	           essential bit, then the property index (7 or 15 bits)
//
// Every read is bounds-checked; anything malformed is ErrCorrupt.

// heifInfo is what readHEIF learns from a HEIF container.
type heifInfo struct {
	brand string // the major brand
	// width and height are the primary item's ispe: its size before
	// irot and imir.
	width, height int
	rotation      int // irot angle, anticlockwise quarter turns (0..3)
	mirror        int // imir axis + 1 (0 = no imir)
	icc           []byte
}

// box is one ISOBMFF box: its type and payload.
type box struct {
	typ     string
	payload []byte
}

// readBoxes splits data into its boxes.
func readBoxes(data []byte) ([]box, error) {
	var boxes []box
	for len(data) > 0 {
		if len(data) < 8 {
			return nil, fmt.Errorf("%w: HEIF box header cut short", ErrCorrupt)
		}
		size := uint64(binary.BigEndian.Uint32(data))
		typ := string(data[4:8])
		hdr := uint64(8)
		switch size {
		case 0:
			size = uint64(len(data))
		case 1:
			if len(data) < 16 {
				return nil, fmt.Errorf("%w: HEIF box %q cut short", ErrCorrupt, typ)
			}
			size, hdr = binary.BigEndian.Uint64(data[8:]), 16
		}
		if size < hdr || size > uint64(len(data)) {
			return nil, fmt.Errorf("%w: HEIF box %q declares %d bytes, %d left", ErrCorrupt, typ, size, len(data))
		}
		boxes = append(boxes, box{typ: typ, payload: data[hdr:size]})
		data = data[size:]
	}
	return boxes, nil
}

// find returns the first box of type typ, or nil.
func find(boxes []box, typ string) *box {
	for i := range boxes {
		if boxes[i].typ == typ {
			return &boxes[i]
		}
	}
	return nil
}

// heifBrand returns the HEIF format of a file whose bytes 4..8 are "ftyp",
// judged from the major and compatible brands: AVIF for avif/avis, HEIC
// for the HEVC brands; "" for other ISO media.
func heifBrand(data []byte) Format {
	if len(data) < 16 || string(data[4:8]) != "ftyp" {
		return ""
	}
	size := int(binary.BigEndian.Uint32(data))
	if size < 16 || size > len(data) {
		size = min(len(data), 64)
	}
	brands := []string{string(data[8:12])}
	for p := 16; p+4 <= size; p += 4 {
		brands = append(brands, string(data[p:p+4]))
	}
	for _, b := range brands { // the major brand first
		switch b {
		case "avif", "avis":
			return AVIF
		case "heic", "heix", "heim", "heis", "hevc", "hevx":
			return HEIC
		}
	}
	return ""
}

// readHEIF reads the primary item's properties from a HEIF file.
func readHEIF(data []byte) (heifInfo, error) {
	top, err := readBoxes(data)
	if err != nil {
		return heifInfo{}, err
	}
	var hi heifInfo
	if ft := find(top, "ftyp"); ft != nil && len(ft.payload) >= 4 {
		hi.brand = string(ft.payload[:4])
	}
	meta := find(top, "meta")
	if meta == nil || len(meta.payload) < 4 {
		return heifInfo{}, fmt.Errorf("%w: HEIF without a meta box", ErrCorrupt)
	}
	inner, err := readBoxes(meta.payload[4:])
	if err != nil {
		return heifInfo{}, err
	}
	pitm := find(inner, "pitm")
	if pitm == nil || len(pitm.payload) < 6 {
		return heifInfo{}, fmt.Errorf("%w: HEIF without a primary item (pitm)", ErrCorrupt)
	}
	var primary uint32
	if pitm.payload[0] == 0 {
		primary = uint32(binary.BigEndian.Uint16(pitm.payload[4:]))
	} else if len(pitm.payload) >= 8 {
		primary = binary.BigEndian.Uint32(pitm.payload[4:])
	}
	iprp := find(inner, "iprp")
	if iprp == nil {
		return heifInfo{}, fmt.Errorf("%w: HEIF without item properties (iprp)", ErrCorrupt)
	}
	pboxes, err := readBoxes(iprp.payload)
	if err != nil {
		return heifInfo{}, err
	}
	ipco := find(pboxes, "ipco")
	if ipco == nil {
		return heifInfo{}, fmt.Errorf("%w: HEIF without a property container (ipco)", ErrCorrupt)
	}
	props, err := readBoxes(ipco.payload)
	if err != nil {
		return heifInfo{}, err
	}
	indices, err := associations(pboxes, primary)
	if err != nil {
		return heifInfo{}, err
	}
	haveSize := false
	for _, i := range indices {
		if i < 1 || i > len(props) {
			return heifInfo{}, fmt.Errorf("%w: HEIF property index %d out of %d", ErrCorrupt, i, len(props))
		}
		p := props[i-1]
		switch p.typ {
		case "ispe":
			if len(p.payload) < 12 {
				return heifInfo{}, fmt.Errorf("%w: HEIF ispe box cut short", ErrCorrupt)
			}
			hi.width = int(binary.BigEndian.Uint32(p.payload[4:]))
			hi.height = int(binary.BigEndian.Uint32(p.payload[8:]))
			haveSize = true
		case "irot":
			if len(p.payload) >= 1 {
				hi.rotation = int(p.payload[0] & 3)
			}
		case "imir":
			if len(p.payload) >= 1 {
				hi.mirror = int(p.payload[0]&1) + 1
			}
		case "colr":
			if len(p.payload) > 4 && (string(p.payload[:4]) == "prof" || string(p.payload[:4]) == "rICC") && hi.icc == nil {
				hi.icc = p.payload[4:]
			}
		}
	}
	if !haveSize {
		return heifInfo{}, fmt.Errorf("%w: HEIF primary item %d has no image size (ispe)", ErrCorrupt, primary)
	}
	return hi, nil
}

// associations returns the 1-based property indices that the ipma boxes
// associate with item.
func associations(pboxes []box, item uint32) ([]int, error) {
	var out []int
	cut := fmt.Errorf("%w: HEIF ipma box cut short", ErrCorrupt)
	for _, b := range pboxes {
		if b.typ != "ipma" {
			continue
		}
		p := b.payload
		if len(p) < 8 {
			return nil, cut
		}
		version, large := p[0], p[3]&1 == 1
		n := binary.BigEndian.Uint32(p[4:])
		p = p[8:]
		for range n {
			var id uint32
			if version < 1 {
				if len(p) < 3 {
					return nil, cut
				}
				id, p = uint32(binary.BigEndian.Uint16(p)), p[2:]
			} else {
				if len(p) < 5 {
					return nil, cut
				}
				id, p = binary.BigEndian.Uint32(p), p[4:]
			}
			count := int(p[0])
			p = p[1:]
			for range count {
				var idx int
				if large {
					if len(p) < 2 {
						return nil, cut
					}
					idx, p = int(binary.BigEndian.Uint16(p)&0x7FFF), p[2:]
				} else {
					if len(p) < 1 {
						return nil, cut
					}
					idx, p = int(p[0]&0x7F), p[1:]
				}
				if id == item {
					out = append(out, idx)
				}
			}
		}
	}
	return out, nil
}

// heifMemory is what the HEIC and AVIF decoders allocate for a w×h image
// from a file of n bytes. Both run libheif or libavif compiled to
// WebAssembly: the file is copied into the module's linear memory, decoded
// there into planes (and, for AVIF, converted to RGBA there), and the
// result copied out into Go memory; the linear memory grows by doubling,
// each growth a copy. Measured with Go 1.26 on the corpus (12.2 MP,
// second decode so the module compilation is not counted):
// iphone_13_pro_max.HEIC allocates 371 MiB (30 bytes per pixel),
// avif-orientation-6.avif 803 MiB (66 bytes per pixel). The estimate adds
// a margin and four times the file.
func heifMemory(f Format, n int, w, h int) int64 {
	px := int64(w) * int64(h)
	per := int64(36)
	if f == AVIF {
		per = 72
	}
	return per*px + 4*int64(n)
}
