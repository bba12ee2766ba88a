package resizer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"image"
	"image/jpeg"
	"image/png"
	"math"
	"testing"

	xwebp "golang.org/x/image/webp"

	"github.com/haybale/haybale/internal/imagetest"
	"github.com/haybale/haybale/internal/thumbhash"
)

// checkOutputs verifies the four outputs of res: letters, sizes, a single
// content type, that each decodes to its stated size, and that none carries
// metadata.
func checkOutputs(t *testing.T, res *Result, want [NumSizes]image.Point) {
	t.Helper()
	specs := Specs()
	for i, img := range res.Images {
		if img.Letter != specs[i].Letter {
			t.Errorf("image %d: letter %q, want %q", i, img.Letter, specs[i].Letter)
		}
		if img.Width != want[i].X || img.Height != want[i].Y {
			t.Errorf("%s: %dx%d, want %dx%d", img.Letter, img.Width, img.Height, want[i].X, want[i].Y)
		}
		if img.Width < 1 || img.Height < 1 {
			t.Errorf("%s: zero-pixel side %dx%d", img.Letter, img.Width, img.Height)
		}
		if img.ContentType != res.Images[0].ContentType {
			t.Errorf("%s: content type %s, t has %s", img.Letter, img.ContentType, res.Images[0].ContentType)
		}
		var cfg image.Config
		var err error
		switch img.ContentType {
		case "image/jpeg":
			cfg, err = jpeg.DecodeConfig(bytes.NewReader(img.Data))
			if bad := jpegMetadata(img.Data); bad != "" {
				t.Errorf("%s: JPEG output carries %s", img.Letter, bad)
			}
		case "image/png":
			cfg, err = png.DecodeConfig(bytes.NewReader(img.Data))
			if bad := imagetest.PNGMetadata(img.Data); bad != "" {
				t.Errorf("%s: PNG output carries %s", img.Letter, bad)
			}
		default:
			t.Fatalf("%s: content type %q", img.Letter, img.ContentType)
		}
		if err != nil {
			t.Fatalf("%s: output does not decode: %v", img.Letter, err)
		}
		if cfg.Width != img.Width || cfg.Height != img.Height {
			t.Errorf("%s: encoded %dx%d, Image says %dx%d", img.Letter, cfg.Width, cfg.Height, img.Width, img.Height)
		}
		if bytes.Contains(img.Data, []byte("Exif\x00")) {
			t.Errorf("%s: output contains an Exif header", img.Letter)
		}
		checkWebP(t, img)
	}
	// The placeholder records the upright aspect ratio, to the precision
	// of its 7 (or 5) luminance terms on the longer side.
	ratio, err := thumbhash.AspectRatio(res.ThumbHash)
	if err != nil {
		t.Fatalf("thumbhash %x: %v", res.ThumbHash, err)
	}
	l := res.Images[NumSizes-1]
	// Beyond 5:1 the hash records its extreme, 5:1 or 7:1.
	shape := float64(l.Width) / float64(l.Height)
	if shape > 5 && ratio >= 5 || shape < 0.2 && ratio <= 0.2 {
		return
	}
	if math.Abs(ratio-shape)/shape > 0.3 {
		t.Errorf("thumbhash aspect ratio %.2f, image is %.2f", ratio, shape)
	}
}

// checkWebP verifies the WebP beside an output: present, decodable at the
// output's size, lossy (VP8) for a JPEG and lossless (VP8L) for a PNG, and
// made only of image chunks (no EXIF or XMP).
func checkWebP(t *testing.T, img Image) {
	t.Helper()
	if img.WebP == nil {
		t.Errorf("%s: no WebP output", img.Letter)
		return
	}
	m, err := xwebp.Decode(bytes.NewReader(img.WebP))
	if err != nil {
		t.Fatalf("%s: WebP does not decode: %v", img.Letter, err)
	}
	if b := m.Bounds(); b.Dx() != img.Width || b.Dy() != img.Height {
		t.Errorf("%s: WebP is %dx%d, want %dx%d", img.Letter, b.Dx(), b.Dy(), img.Width, img.Height)
	}
	chunks, err := webpChunks(img.WebP)
	if err != nil {
		t.Fatalf("%s: %v", img.Letter, err)
	}
	want := "VP8 "
	if img.ContentType == "image/png" {
		want = "VP8L"
	}
	found := false
	for _, c := range chunks {
		switch c {
		case "VP8 ", "VP8L", "VP8X", "ALPH", "ICCP":
		default:
			t.Errorf("%s: WebP carries a %q chunk", img.Letter, c)
		}
		found = found || c == want
	}
	if !found {
		t.Errorf("%s: WebP chunks %q lack %q", img.Letter, chunks, want)
	}
}

// webpChunks lists the chunk FourCCs of a RIFF WebP file.
func webpChunks(data []byte) ([]string, error) {
	if len(data) < 12 || string(data[:4]) != "RIFF" || string(data[8:12]) != "WEBP" {
		return nil, errors.New("not a RIFF WEBP file")
	}
	var out []string
	for p := 12; p < len(data); {
		if p+8 > len(data) {
			return nil, errors.New("WebP chunk header cut short")
		}
		n := int(binary.LittleEndian.Uint32(data[p+4:]))
		out = append(out, string(data[p:p+4]))
		p += 8 + n + n&1
		if p > len(data) {
			return nil, errors.New("WebP chunk cut short")
		}
	}
	return out, nil
}

// jpegMetadata returns a description of the first marker segment before the
// scan that is not needed to decode (APPn, COM), or "".
func jpegMetadata(data []byte) string {
	pos := 2
	for pos+4 <= len(data) && data[pos] == 0xFF {
		m := data[pos+1]
		if m == 0xDA {
			return ""
		}
		if m == 0xE2 && bytes.HasPrefix(data[pos+4:], []byte("ICC_PROFILE\x00")) {
			pos += 2 + int(binary.BigEndian.Uint16(data[pos+2:]))
			continue // the colour profile is carried on purpose (icc.go)
		}
		if m >= 0xE0 && m <= 0xEF {
			return "an APP" + string(rune('0'+int(m-0xE0)%10)) + " segment"
		}
		if m == 0xFE {
			return "a COM segment"
		}
		pos += 2 + int(binary.BigEndian.Uint16(data[pos+2:]))
	}
	return "a malformed header"
}

// decodeOutput decodes one output image.
func decodeOutput(t *testing.T, img Image) image.Image {
	t.Helper()
	var m image.Image
	var err error
	if img.ContentType == "image/png" {
		m, err = png.Decode(bytes.NewReader(img.Data))
	} else {
		m, err = jpeg.Decode(bytes.NewReader(img.Data))
	}
	if err != nil {
		t.Fatalf("%s: %v", img.Letter, err)
	}
	return m
}

// meanAbsDiff returns the mean absolute difference per RGB channel (0..255)
// of two outputs of the same size.
func meanAbsDiff(t *testing.T, a, b Image) float64 {
	t.Helper()
	ma, mb := decodeOutput(t, a), decodeOutput(t, b)
	if ma.Bounds() != mb.Bounds() {
		t.Fatalf("%s: sizes differ: %v and %v", a.Letter, ma.Bounds(), mb.Bounds())
	}
	return imagetest.MeanAbsDiff(ma, mb)
}

func absDiff(a, b uint32) float64 {
	if a > b {
		return float64(a - b)
	}
	return float64(b - a)
}

// heifHeader builds the header of a HEIF file of the given major brand
// whose primary item (ID 1) has an ispe of w×h (none when w < 0) and an
// irot of rot quarter turns (none when rot < 0), and no image data.
func heifHeader(brand string, w, h, rot int) []byte {
	bx := func(typ string, parts ...[]byte) []byte {
		payload := bytes.Join(parts, nil)
		out := binary.BigEndian.AppendUint32(nil, uint32(8+len(payload)))
		return append(append(out, typ...), payload...)
	}
	u32 := func(v int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }
	var props [][]byte
	var assoc []byte
	if w >= 0 {
		props = append(props, bx("ispe", u32(0), u32(w), u32(h)))
		assoc = append(assoc, byte(len(props)))
	}
	if rot >= 0 {
		props = append(props, bx("irot", []byte{byte(rot)}))
		assoc = append(assoc, 0x80|byte(len(props)))
	}
	ipma := bx("ipma", u32(0), u32(1), []byte{0, 1, byte(len(assoc))}, assoc)
	meta := bx("meta", u32(0),
		bx("hdlr", u32(0), u32(0), []byte("pict"), make([]byte, 13)),
		bx("pitm", u32(0), []byte{0, 1}),
		bx("iprp", bx("ipco", props...), ipma))
	return append(bx("ftyp", []byte(brand), u32(0), []byte("mif1"+brand)), meta...)
}
