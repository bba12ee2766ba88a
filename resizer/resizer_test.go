package resizer

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"image/png"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/disintegration/imaging"

	"github.com/haybale/haybale/internal/imagetest"
)

// Tiny WebP files (1×1), as used by browser feature detection.
var (
	webpLossy        = mustBase64("UklGRiIAAABXRUJQVlA4IBYAAAAwAQCdASoBAAEADsD+JaQAA3AAAAAA")
	webpLossless     = mustBase64("UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA==")
	webpAlpha        = mustBase64("UklGRkoAAABXRUJQVlA4WAoAAAAQAAAAAAAAAAAAQUxQSAwAAAARBxAR/Q9ERP8DAABWUDggGAAAABQBAJ0BKgEAAQAAAP4AAA3AAP7mtQAAAA==")
	webpAnimatedFile = mustBase64("UklGRlIAAABXRUJQVlA4WAoAAAASAAAAAAAAAAAAQU5JTQYAAAD/////AABBTk1GJgAAAAAAAAAAAAAAAAAAAGQAAABWUDhMDQAAAC8AAAAQBxAREYiI/gcA")
)

func mustBase64(s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func encodePNG(t testing.TB, m image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, m); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func process(t *testing.T, data []byte) *Result {
	t.Helper()
	res, err := New(Options{}).Process(context.Background(), data)
	if err != nil {
		t.Fatalf("Process: %v", err)
	}
	return res
}

// tiffEntry is one IFD entry: value holds the 4 value bytes, or the data
// that does not fit, which exifTIFF places after the IFDs.
type tiffEntry struct {
	tag, typ uint16
	count    uint32
	value    []byte
}

// exifTIFF builds a TIFF structure: IFD0 with Make, Orientation (unless
// orientation is 0) and, with gps, a GPS IFD holding a latitude.
func exifTIFF(bo interface {
	binary.ByteOrder
	binary.AppendByteOrder
}, orientation int, gps bool) []byte {
	short := func(v uint16) []byte { b := make([]byte, 4); bo.PutUint16(b, v); return b }
	long := func(v uint32) []byte { b := make([]byte, 4); bo.PutUint32(b, v); return b }
	rational := func(vals ...uint32) []byte {
		var b []byte
		for _, v := range vals {
			b = append(b, long(v)...)
			b = append(b, long(1)...)
		}
		return b
	}
	ifd0 := []tiffEntry{{tag: 0x010F, typ: 2, count: 11, value: []byte("HaybaleCam\x00")}}
	if orientation != 0 {
		ifd0 = append(ifd0, tiffEntry{tag: 0x0112, typ: 3, count: 1, value: short(uint16(orientation))})
	}
	var gpsIFD []tiffEntry
	if gps {
		ifd0 = append(ifd0, tiffEntry{tag: 0x8825, typ: 4, count: 1}) // offset patched below
		gpsIFD = []tiffEntry{
			{tag: 0x0001, typ: 2, count: 2, value: []byte("N\x00\x00\x00")},
			{tag: 0x0002, typ: 5, count: 3, value: rational(51, 30, 26)},
		}
	}
	ifdLen := func(n int) int { return 2 + 12*n + 4 }
	ifd0Off := 8
	gpsOff := ifd0Off + ifdLen(len(ifd0))
	dataOff := gpsOff
	if gps {
		dataOff += ifdLen(len(gpsIFD))
		ifd0[len(ifd0)-1].value = long(uint32(gpsOff))
	}
	var out, data []byte
	if bo == binary.LittleEndian {
		out = []byte("II")
	} else {
		out = []byte("MM")
	}
	out = bo.AppendUint16(out, 42)
	out = bo.AppendUint32(out, uint32(ifd0Off))
	writeIFD := func(entries []tiffEntry) {
		out = bo.AppendUint16(out, uint16(len(entries)))
		for _, e := range entries {
			out = bo.AppendUint16(out, e.tag)
			out = bo.AppendUint16(out, e.typ)
			out = bo.AppendUint32(out, e.count)
			if len(e.value) <= 4 {
				out = append(out, append(e.value, make([]byte, 4-len(e.value))...)...)
			} else {
				out = bo.AppendUint32(out, uint32(dataOff+len(data)))
				data = append(data, e.value...)
			}
		}
		out = bo.AppendUint32(out, 0) // no next IFD
	}
	writeIFD(ifd0)
	if gps {
		writeIFD(gpsIFD)
	}
	return append(out, data...)
}

// segment returns a JPEG marker segment.
func segment(marker byte, payload []byte) []byte {
	s := []byte{0xFF, marker, 0, 0}
	binary.BigEndian.PutUint16(s[2:], uint16(len(payload)+2))
	return append(s, payload...)
}

// withSegments splices segments right after the SOI of a JPEG.
func withSegments(jpg []byte, segs ...[]byte) []byte {
	out := append([]byte{}, jpg[:2]...)
	for _, s := range segs {
		out = append(out, s...)
	}
	return append(out, jpg[2:]...)
}

func exifSegment(tiff []byte) []byte {
	return segment(0xE1, append([]byte("Exif\x00\x00"), tiff...))
}

// TestOrientation checks all eight EXIF orientations, with the EXIF segment
// in either byte order, directly after SOI or after APP0 and an XMP APP1,
// for an image inside every box and one that is resized.
func TestOrientation(t *testing.T) {
	for _, size := range []image.Point{{64, 48}, {1200, 400}} {
		upright := imagetest.Marked(size.X, size.Y, 8)
		for o := 1; o <= 8; o++ {
			t.Run(fmt.Sprintf("%dx%d/orientation=%d", size.X, size.Y, o), func(t *testing.T) {
				jpg := encodeJPEG(t, imagetest.StoredAs(upright, o), 95)
				var data []byte
				if o%2 == 1 {
					data = withSegments(jpg, exifSegment(exifTIFF(binary.LittleEndian, o, false)))
				} else {
					data = withSegments(jpg,
						segment(0xE0, []byte("JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")),
						segment(0xE1, []byte("http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>")),
						exifSegment(exifTIFF(binary.BigEndian, o, false)))
				}
				res := process(t, data)
				if res.Width != size.X || res.Height != size.Y || res.Orientation != o {
					t.Fatalf("upright %dx%d orientation %d, want %dx%d orientation %d",
						res.Width, res.Height, res.Orientation, size.X, size.Y, o)
				}
				checkOutputs(t, res, Dimensions(size.X, size.Y))
				for _, code := range []int{1, 3} { // s and l
					m := decodeOutput(t, res.Images[code])
					b := m.Bounds()
					dx, dy := b.Dx()/32, b.Dy()/32
					if !imagetest.IsRed(m.At(dx, dy)) || !imagetest.IsGreen(m.At(b.Dx()-1-dx, dy)) {
						t.Errorf("%s: top-left %v, top-right %v; want red and green",
							res.Images[code].Letter, m.At(dx, dy), m.At(b.Dx()-1-dx, dy))
					}
					if imagetest.IsRed(m.At(dx, b.Dy()-1-dy)) || imagetest.IsRed(m.At(b.Dx()-1-dx, b.Dy()-1-dy)) {
						t.Errorf("%s: red marker at the bottom", res.Images[code].Letter)
					}
				}
			})
		}
	}
}

func TestOrientationOutOfRangeIgnored(t *testing.T) {
	jpg := encodeJPEG(t, imagetest.Marked(64, 48, 8), 90)
	for _, o := range []int{0, 9, 255, 65535} {
		res := process(t, withSegments(jpg, exifSegment(exifTIFF(binary.LittleEndian, o, false))))
		if res.Orientation != 1 || res.Width != 64 || res.Height != 48 {
			t.Errorf("orientation %d: got orientation %d, %dx%d", o, res.Orientation, res.Width, res.Height)
		}
	}
}

// TestMetadataStripped feeds a JPEG with EXIF (camera make and GPS
// position), XMP, a comment and an ICC profile, and checks no output carries
// any of them.
func TestMetadataStripped(t *testing.T) {
	jpg := encodeJPEG(t, photoLike(900, 600, 2), 90)
	data := withSegments(jpg,
		exifSegment(exifTIFF(binary.BigEndian, 1, true)),
		segment(0xE1, []byte("http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta>HaybaleCam</x:xmpmeta>")),
		segment(0xE2, []byte("ICC_PROFILE\x00\x01\x01HaybaleCam")),
		segment(0xFE, []byte("comment HaybaleCam")))
	if got := scanJPEG(data).orientation; got != 1 {
		t.Fatalf("test input: orientation %d", got)
	}
	res := process(t, data)
	checkOutputs(t, res, Dimensions(900, 600)) // no APPn, COM or Exif
	for _, img := range res.Images {
		if bytes.Contains(img.Data, []byte("HaybaleCam")) {
			t.Errorf("%s: output contains input metadata", img.Letter)
		}
		if bytes.Contains(img.Data, []byte{0xFF, 0xE1}) && jpegMetadata(img.Data) != "" {
			t.Errorf("%s: output has an APP1 segment", img.Letter)
		}
	}
}

// TestAlpha: an image with a non-opaque pixel gives PNG outputs that keep
// transparency and colour; an RGBA PNG whose alpha is 255 everywhere gives
// JPEG.
func TestAlpha(t *testing.T) {
	const w, h = 600, 400
	m := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			switch {
			case x < w/3:
				m.SetNRGBA(x, y, color.NRGBA{255, 255, 255, 0})
			case x < 2*w/3:
				m.SetNRGBA(x, y, color.NRGBA{0, 0, 255, 100}) // translucent blue
			default:
				m.SetNRGBA(x, y, color.NRGBA{255, 0, 0, 255})
			}
		}
	}
	res := process(t, encodePNG(t, m))
	checkOutputs(t, res, Dimensions(w, h))
	for _, img := range res.Images {
		if img.ContentType != "image/png" {
			t.Fatalf("%s: %s, want image/png", img.Letter, img.ContentType)
		}
		out := decodeOutput(t, img)
		b := out.Bounds()
		mid := b.Dy() / 2
		left := color.NRGBAModel.Convert(out.At(b.Dx()/6, mid)).(color.NRGBA)
		centre := color.NRGBAModel.Convert(out.At(b.Dx()/2, mid)).(color.NRGBA)
		right := color.NRGBAModel.Convert(out.At(b.Dx()*5/6, mid)).(color.NRGBA)
		if img.Letter == "t" { // a centre crop: only the translucent band
			left, right = centre, centre
		}
		if left.A != 0 && img.Letter != "t" {
			t.Errorf("%s: transparent area has alpha %d", img.Letter, left.A)
		}
		if centre.A < 95 || centre.A > 105 || centre.B < 245 || centre.R > 10 {
			t.Errorf("%s: translucent blue became %v", img.Letter, centre)
		}
		if img.Letter != "t" && right != (color.NRGBA{255, 0, 0, 255}) {
			t.Errorf("%s: opaque red became %v", img.Letter, right)
		}
	}

	// The same pixels, all opaque.
	for i := 3; i < len(m.Pix); i += 4 {
		m.Pix[i] = 255
	}
	res = process(t, encodePNG(t, m))
	checkOutputs(t, res, Dimensions(w, h))
	if res.Images[0].ContentType != "image/jpeg" {
		t.Errorf("opaque RGBA PNG gives %s, want image/jpeg", res.Images[0].ContentType)
	}
}

// TestFormats runs one small image of each accepted kind through Process.
func TestFormats(t *testing.T) {
	photo := photoLike(350, 250, 3)
	gray := image.NewGray(photo.Bounds())
	cmyk := image.NewCMYK(photo.Bounds())
	pal := image.NewPaletted(photo.Bounds(), palette.Plan9)
	deep := image.NewRGBA64(photo.Bounds())
	for _, dst := range []interface {
		image.Image
		Set(x, y int, c color.Color)
	}{gray, cmyk, pal, deep} {
		for y := range 250 {
			for x := range 350 {
				dst.Set(x, y, photo.At(x, y))
			}
		}
	}
	transparentPal := image.NewPaletted(image.Rect(0, 0, 40, 30), color.Palette{color.Transparent, color.RGBA{255, 0, 0, 255}})
	transparentPal.SetColorIndex(5, 5, 1)
	var gifBuf, gifTransparent, gifOffset bytes.Buffer
	if err := gif.Encode(&gifBuf, pal, nil); err != nil {
		t.Fatal(err)
	}
	if err := gif.Encode(&gifTransparent, transparentPal, nil); err != nil {
		t.Fatal(err)
	}
	// A first frame smaller than the logical screen, placed inside it.
	frame := image.NewPaletted(image.Rect(10, 10, 30, 20), color.Palette{color.RGBA{0, 0, 255, 255}})
	if err := gif.EncodeAll(&gifOffset, &gif.GIF{Image: []*image.Paletted{frame}, Delay: []int{0},
		Config: image.Config{Width: 64, Height: 40, ColorModel: frame.Palette}}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name        string
		data        []byte
		format      Format
		w, h        int
		contentType string
	}{
		{"jpeg 4:2:0", encodeJPEG(t, photo, 90), JPEG, 350, 250, "image/jpeg"},
		{"jpeg gray", encodeJPEG(t, gray, 90), JPEG, 350, 250, "image/jpeg"},
		{"png gray", encodePNG(t, gray), PNG, 350, 250, "image/jpeg"},
		{"png cmyk→rgba", encodePNG(t, cmyk), PNG, 350, 250, "image/jpeg"},
		{"png paletted", encodePNG(t, pal), PNG, 350, 250, "image/jpeg"},
		{"png 16-bit", encodePNG(t, deep), PNG, 350, 250, "image/jpeg"},
		{"gif", gifBuf.Bytes(), GIF, 350, 250, "image/jpeg"},
		{"gif transparent", gifTransparent.Bytes(), GIF, 40, 30, "image/png"},
		{"gif frame inside a larger screen", gifOffset.Bytes(), GIF, 64, 40, "image/png"},
		{"webp lossy", webpLossy, WebP, 1, 1, "image/jpeg"},
		{"webp lossless transparent", webpLossless, WebP, 1, 1, "image/png"},
		{"webp alpha", webpAlpha, WebP, 1, 1, "image/png"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := process(t, c.data)
			if res.Format != c.format || res.Width != c.w || res.Height != c.h {
				t.Fatalf("got %s %dx%d, want %s %dx%d", res.Format, res.Width, res.Height, c.format, c.w, c.h)
			}
			checkOutputs(t, res, Dimensions(c.w, c.h))
			if res.Images[0].ContentType != c.contentType {
				t.Errorf("content type %s, want %s", res.Images[0].ContentType, c.contentType)
			}
		})
	}
}

// TestSizes processes images of extreme and ordinary aspect ratios, tiny
// ones included, and checks the size table: no upscaling, no zero side.
func TestSizes(t *testing.T) {
	for _, s := range []image.Point{
		{1, 1}, {2, 3}, {100, 68}, {150, 150}, {149, 2000}, {480, 480}, {481, 480},
		{5000, 10}, {10, 5000}, {3000, 1}, {1, 3000}, {2049, 301}, {500, 2100},
	} {
		t.Run(fmt.Sprintf("%dx%d", s.X, s.Y), func(t *testing.T) {
			// Opaque and translucent variants take the two paths.
			for _, alpha := range []uint8{255, 128} {
				m := image.NewNRGBA(image.Rect(0, 0, s.X, s.Y))
				for i := range m.Pix {
					m.Pix[i] = uint8(i * 7)
				}
				for i := 3; i < len(m.Pix); i += 4 {
					m.Pix[i] = alpha
				}
				data := encodePNG(t, m)
				if alpha == 255 {
					data = encodeJPEG(t, m, 90)
				}
				res := process(t, data)
				checkOutputs(t, res, expectedDims(s.X, s.Y))
			}
		})
	}
}

func TestDimensions(t *testing.T) {
	cases := []struct {
		w, h int
		want [NumSizes]image.Point
	}{
		{4000, 3000, [4]image.Point{{150, 150}, {480, 360}, {1080, 810}, {2048, 1536}}},
		{3000, 4000, [4]image.Point{{150, 150}, {360, 480}, {810, 1080}, {1536, 2048}}},
		{5000, 10, [4]image.Point{{10, 10}, {480, 1}, {1080, 2}, {2048, 4}}},
		{10, 5000, [4]image.Point{{10, 10}, {1, 480}, {2, 1080}, {4, 2048}}},
		{100, 68, [4]image.Point{{68, 68}, {100, 68}, {100, 68}, {100, 68}}},
		{1, 1, [4]image.Point{{1, 1}, {1, 1}, {1, 1}, {1, 1}}},
		{2048, 2048, [4]image.Point{{150, 150}, {480, 480}, {1080, 1080}, {2048, 2048}}},
		{149, 2000, [4]image.Point{{149, 149}, {36, 480}, {80, 1080}, {149, 2000}}},
	}
	for _, c := range cases {
		if got := Dimensions(c.w, c.h); got != c.want {
			t.Errorf("Dimensions(%d, %d) = %v, want %v", c.w, c.h, got, c.want)
		}
	}
	rng := rand.New(rand.NewSource(1))
	for range 100000 {
		w, h := 1+rng.Intn(20000), 1+rng.Intn(20000)
		if rng.Intn(4) == 0 {
			h = 1 + rng.Intn(40)
		}
		got := Dimensions(w, h)
		if want := expectedDims(w, h); got != want {
			t.Fatalf("Dimensions(%d, %d) = %v, want %v", w, h, got, want)
		}
		for i, d := range got {
			box := Specs()[i].Box
			if d.X < 1 || d.Y < 1 || d.X > w || d.Y > h || d.X > box || d.Y > box {
				t.Fatalf("Dimensions(%d, %d)[%d] = %v", w, h, i, d)
			}
		}
	}
}

// classes returns the error classes err wraps.
func classes(err error) []error {
	var out []error
	for _, c := range []error{ErrEmpty, ErrUnsupported, ErrTooLarge, ErrCorrupt} {
		if errors.Is(err, c) {
			out = append(out, c)
		}
	}
	return out
}

// pngChunk returns a PNG chunk with its CRC.
func pngChunk(typ string, data []byte) []byte {
	c := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	c = append(c, typ...)
	c = append(c, data...)
	return binary.BigEndian.AppendUint32(c, crc32.ChecksumIEEE(c[4:]))
}

// pngHeader returns a PNG signature and an IHDR for w×h 8-bit RGBA, followed
// by a small IDAT and IEND.
func pngHeader(w, h uint32) []byte {
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 6, 0, 0, 0)
	out := append([]byte("\x89PNG\r\n\x1a\n"), pngChunk("IHDR", ihdr)...)
	out = append(out, pngChunk("IDAT", []byte{0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01})...)
	return append(out, pngChunk("IEND", nil)...)
}

// patchSOF rewrites the frame header of a JPEG: its marker and, when w and
// h are not negative, its size.
func patchSOF(t *testing.T, jpg []byte, marker byte, w, h int) []byte {
	out := append([]byte{}, jpg...)
	for i := 2; i+9 < len(out); {
		m := out[i+1]
		if m == 0xC0 {
			out[i+1] = marker
			if w >= 0 {
				binary.BigEndian.PutUint16(out[i+5:], uint16(h))
				binary.BigEndian.PutUint16(out[i+7:], uint16(w))
			}
			return out
		}
		i += 2 + int(binary.BigEndian.Uint16(out[i+2:]))
	}
	t.Fatal("no SOF0")
	return nil
}

func TestErrors(t *testing.T) {
	jpg := encodeJPEG(t, photoLike(200, 100, 4), 90)
	small := encodePNG(t, image.NewGray(image.Rect(0, 0, 100, 100)))
	badCRC := append([]byte{}, small...)
	badCRC[len(badCRC)-13] ^= 0xFF // last byte of the IDAT CRC
	var bigGIF bytes.Buffer
	frame := image.NewPaletted(image.Rect(0, 0, 1, 1), color.Palette{color.Black})
	if err := gif.EncodeAll(&bigGIF, &gif.GIF{Image: []*image.Paletted{frame}, Delay: []int{0},
		Config: image.Config{Width: 65535, Height: 65535, ColorModel: frame.Palette}}); err != nil {
		t.Fatal(err)
	}
	var smallGIF bytes.Buffer
	if err := gif.Encode(&smallGIF, image.NewPaletted(image.Rect(0, 0, 50, 50), palette.Plan9), nil); err != nil {
		t.Fatal(err)
	}
	tiffFile := append([]byte("II*\x00\x08\x00\x00\x00"), make([]byte, 100)...)
	heic := append([]byte("\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"), make([]byte, 100)...)
	avif := append([]byte("\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf"), make([]byte, 100)...)
	random := make([]byte, 4096)
	rand.New(rand.NewSource(5)).Read(random)
	random[0] = 0

	cases := []struct {
		name  string
		opts  Options
		data  []byte
		class error
		msg   string
	}{
		{"nil", Options{}, nil, ErrEmpty, "empty"},
		{"empty", Options{}, []byte{}, ErrEmpty, "empty"},
		{"text", Options{}, []byte("This is not an image.\n"), ErrUnsupported, "text"},
		{"random", Options{}, random, ErrUnsupported, "no known image signature"},
		{"tiff", Options{}, tiffFile, ErrUnsupported, "TIFF"},
		{"heic without meta", Options{}, heic, ErrCorrupt, "without a meta box"},
		{"avif without meta", Options{}, avif, ErrCorrupt, "without a meta box"},
		{"heif of another codec", Options{}, heifHeader("mif1", 64, 64, -1), ErrUnsupported, "HEIF without an HEVC or AV1 brand"},
		{"heic bomb", Options{}, heifHeader("heic", 50000, 50000, 1), ErrTooLarge, "image is 50000x50000 (2500 MP), over the 80 MP limit"},
		{"avif bomb", Options{}, heifHeader("avif", 65535, 65535, -1), ErrTooLarge, "65535x65535"},
		{"avif over the memory budget", Options{}, heifHeader("avif", 8000, 6000, -1), ErrTooLarge, "decode memory budget"},
		{"heic of 32-bit sides", Options{}, heifHeader("heic", 1<<32-1, 1<<32-1, -1), ErrTooLarge, "image is 4294967295x4294967295, over the 80 MP limit"},
		{"heic without ispe", Options{}, heifHeader("heic", -1, -1, 3), ErrCorrupt, "no image size (ispe)"},
		{"heic truncated box", Options{}, heifHeader("heic", 10, 10, 1)[:60], ErrCorrupt, "HEIF box"},
		{"heic header only", Options{}, heifHeader("heic", 100, 80, -1), ErrCorrupt, "heic"},
		{"bmp", Options{}, append([]byte("BM"), make([]byte, 60)...), ErrUnsupported, "BMP"},
		{"animated webp", Options{}, webpAnimatedFile, ErrUnsupported, "animated WebP"},
		{"lossless jpeg", Options{}, patchSOF(t, jpg, 0xC3, -1, -1), ErrUnsupported, "lossless JPEG"},
		{"arithmetic jpeg", Options{}, patchSOF(t, jpg, 0xC9, -1, -1), ErrUnsupported, "arithmetic"},
		{"bytes over limit", Options{MaxBytes: 100}, jpg, ErrTooLarge, "-byte limit"},
		{"pixels over limit", Options{MaxPixels: 1000}, small, ErrTooLarge, "image is 100x100 (0.01 MP), over the 0.001 MP limit"},
		{"png bomb", Options{}, pngHeader(50000, 50000), ErrTooLarge, "image is 50000x50000 (2500 MP), over the 80 MP limit"},
		{"jpeg header bomb", Options{}, patchSOF(t, jpg, 0xC0, 65500, 65500), ErrTooLarge, "image is 65500x65500 (4290 MP), over the 80 MP limit"},
		{"gif canvas bomb", Options{}, bigGIF.Bytes(), ErrTooLarge, "65535x65535"},
		{"jpeg truncated", Options{}, jpg[:len(jpg)/2], ErrCorrupt, ""},
		{"jpeg header only", Options{}, jpg[:20], ErrCorrupt, ""},
		{"jpeg zero height", Options{}, patchSOF(t, jpg, 0xC0, 200, 0), ErrCorrupt, "0 pixels"},
		{"png zero width", Options{}, pngHeader(0, 10), ErrCorrupt, ""},
		{"png bad crc", Options{}, badCRC, ErrCorrupt, "checksum"},
		{"png truncated", Options{}, small[:len(small)-20], ErrCorrupt, ""},
		{"gif truncated", Options{}, smallGIF.Bytes()[:smallGIF.Len()-10], ErrCorrupt, ""},
		{"webp truncated", Options{}, webpLossy[:30], ErrCorrupt, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := New(c.opts).Process(context.Background(), c.data)
			if res != nil {
				t.Errorf("got a result with error %v", err)
			}
			if got := classes(err); len(got) != 1 || got[0] != c.class {
				t.Fatalf("error %v wraps %v, want only %v", err, got, c.class)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q does not mention %q", err, c.msg)
			}
			if _, perr := New(c.opts).Probe(c.data); c.class != ErrCorrupt && !errors.Is(perr, c.class) {
				t.Errorf("Probe: %v, want %v", perr, c.class)
			}
		})
	}
}

func TestDecoderPanicIsCorrupt(t *testing.T) {
	_, err := guard(JPEG, func() (image.Image, error) { panic("index out of range") })
	err = decodeError(err)
	if got := classes(err); len(got) != 1 || got[0] != ErrCorrupt {
		t.Fatalf("%v wraps %v, want ErrCorrupt", err, got)
	}
	if !strings.Contains(err.Error(), "index out of range") {
		t.Errorf("%v does not name the panic", err)
	}
}

func TestContext(t *testing.T) {
	data := encodeJPEG(t, photoLike(300, 200, 6), 90)
	r := New(Options{MaxConcurrent: 1})

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Process(ctx, data); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}

	// Hold the only slot: Process must give up when its deadline passes.
	if err := r.acquire(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := r.Process(ctx, data); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting for a slot: %v", err)
	}
	r.release(1)
	if _, err := r.Process(context.Background(), data); err != nil {
		t.Errorf("after release: %v", err)
	}
}

// TestConcurrent runs more calls than slots at once; under -race it also
// checks the pool and the parallel resampling for data races.
func TestConcurrent(t *testing.T) {
	r := New(Options{MaxConcurrent: 2})
	inputs := [][]byte{
		encodeJPEG(t, photoLike(600, 500, 7), 90),
		encodePNG(t, photoLike(500, 300, 8)),
		withSegments(encodeJPEG(t, imagetest.Marked(600, 500, 8), 90), exifSegment(exifTIFF(binary.LittleEndian, 6, false))),
	}
	var wg sync.WaitGroup
	for i := range 9 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.Process(context.Background(), inputs[i%len(inputs)])
			if err != nil {
				t.Error(err)
				return
			}
			if res.Images[3].Width == 0 {
				t.Error("empty output")
			}
		}()
	}
	wg.Wait()
	if n := len(r.slots); n != 0 {
		t.Errorf("%d slots still held", n)
	}
}

// TestResampleMatchesImaging compares this package's fixed-point resampler
// with imaging.Resize (float64, Lanczos) on an opaque photo and on a
// translucent image.
func TestResampleMatchesImaging(t *testing.T) {
	photo := photoLike(900, 600, 9)
	translucent := image.NewNRGBA(photo.Rect)
	copy(translucent.Pix, photo.Pix)
	for i := 3; i < len(translucent.Pix); i += 4 {
		translucent.Pix[i] = uint8(40 + (i/4)%200)
	}
	for _, src := range []image.Image{photo, translucent} {
		got := resize(src, src.Bounds(), 301, 200, lanczos3)
		want := imaging.Resize(src, 301, 200, imaging.Lanczos)
		var sum, n float64
		for y := range 200 {
			for x := range 301 {
				g := color.NRGBAModel.Convert(got.At(x, y)).(color.NRGBA)
				w := want.NRGBAAt(x, y)
				sum += absDiff(uint32(g.R), uint32(w.R)) + absDiff(uint32(g.G), uint32(w.G)) +
					absDiff(uint32(g.B), uint32(w.B)) + absDiff(uint32(g.A), uint32(w.A))
				n += 4
			}
		}
		if d := sum / n; d > 1.5 {
			t.Errorf("%T: mean difference from imaging.Resize %.2f per channel", src, d)
		}
	}
}

func TestSniff(t *testing.T) {
	for _, c := range []struct {
		data []byte
		want Format
	}{
		{[]byte("\xFF\xD8\xFF\xE0"), JPEG},
		{[]byte("\x89PNG\r\n\x1a\n"), PNG},
		{[]byte("GIF87a"), GIF},
		{[]byte("GIF89a"), GIF},
		{[]byte("RIFF\x00\x00\x00\x00WEBP"), WebP},
		{[]byte("RIFF\x00\x00\x00\x00WAVE"), ""},
		{[]byte("\xFF\xD8"), ""},
		{[]byte("GIF"), ""},
	} {
		got, err := Sniff(c.data)
		if got != c.want || (c.want == "") != (err != nil) {
			t.Errorf("Sniff(%q) = %q, %v; want %q", c.data, got, err, c.want)
		}
	}
}

func TestEXIFParser(t *testing.T) {
	for _, bo := range []interface {
		binary.ByteOrder
		binary.AppendByteOrder
	}{binary.LittleEndian, binary.BigEndian} {
		for o := 1; o <= 8; o++ {
			tiff := exifTIFF(bo, o, o%2 == 0)
			if got := exifOrientation(tiff); got != o {
				t.Errorf("%v orientation %d: got %d", bo, o, got)
			}
			// Every truncation is safe and gives 0 or the value.
			for n := range tiff {
				if got := exifOrientation(tiff[:n]); got != 0 && got != o {
					t.Fatalf("truncated to %d: got %d", n, got)
				}
			}
		}
	}
	valid := exifTIFF(binary.LittleEndian, 6, false)
	bad := func(f func(b []byte)) []byte { b := append([]byte{}, valid...); f(b); return b }
	for name, tiff := range map[string][]byte{
		"no byte order":   bad(func(b []byte) { b[0] = 'X' }),
		"bad magic":       bad(func(b []byte) { b[2] = 43 }),
		"ifd offset past": bad(func(b []byte) { binary.LittleEndian.PutUint32(b[4:], 1<<31) }),
		"ifd offset 0":    bad(func(b []byte) { binary.LittleEndian.PutUint32(b[4:], 0) }),
		"huge count":      bad(func(b []byte) { binary.LittleEndian.PutUint16(b[8:], 0xFFFF) }),
		"wrong type":      bad(func(b []byte) { binary.LittleEndian.PutUint16(b[8+2+12+2:], 7) }),
		"count 2":         bad(func(b []byte) { binary.LittleEndian.PutUint32(b[8+2+12+4:], 2) }),
	} {
		want := 0
		if name == "huge count" {
			want = 6 // the entries that fit are still read
		}
		if got := exifOrientation(tiff); got != want {
			t.Errorf("%s: got %d, want %d", name, got, want)
		}
	}
	// A LONG orientation is accepted.
	long := bad(func(b []byte) {
		e := b[8+2+12:]
		binary.LittleEndian.PutUint16(e[2:], 4)
		binary.LittleEndian.PutUint32(e[8:], 8)
	})
	if got := exifOrientation(long); got != 8 {
		t.Errorf("LONG orientation: got %d", got)
	}

	// scanJPEG: fill bytes, a second Exif segment (ignored) and an Exif
	// segment after the frame header.
	jpg := encodeJPEG(t, image.NewGray(image.Rect(0, 0, 8, 8)), 90)
	two := withSegments(jpg, []byte{0xFF, 0xFF}, exifSegment(exifTIFF(binary.BigEndian, 3, false)),
		exifSegment(exifTIFF(binary.BigEndian, 5, false)))
	if h := scanJPEG(two); h.orientation != 3 || h.sof != 0xC0 {
		t.Errorf("two Exif segments: %+v", h)
	}
	sos := bytes.Index(jpg, []byte{0xFF, 0xDA})
	late := append(append(append([]byte{}, jpg[:sos]...), exifSegment(exifTIFF(binary.LittleEndian, 7, false))...), jpg[sos:]...)
	if h := scanJPEG(late); h.orientation != 7 {
		t.Errorf("Exif after SOF: %+v", h)
	}
	for n := range late {
		scanJPEG(late[:n]) // must not panic
	}
}

func TestOptionsDefaults(t *testing.T) {
	got := New(Options{}).Options()
	if got.MaxBytes != 32<<20 || got.MaxPixels != 80_000_000 || got.MaxConcurrent < 1 || got.DecodeMemory != 1<<30 {
		t.Errorf("defaults %+v", got)
	}
	set := Options{MaxBytes: 1, MaxPixels: 2, MaxConcurrent: 3, DecodeMemory: 4}
	if got := New(set).Options(); got != set {
		t.Errorf("Options() = %+v, want %+v", got, set)
	}
}

// TestProbeHEIFRotation checks that Probe reads a HEIF's size from its ispe
// box and swaps it for a quarter-turn irot, without decoding.
func TestProbeHEIFRotation(t *testing.T) {
	r := New(Options{})
	for _, c := range []struct {
		brand     string
		rot       int
		w, h      int
		wantFmt   Format
		wantW, wH int
	}{
		{"heic", 1, 4032, 3024, HEIC, 3024, 4032},
		{"heic", 3, 4032, 3024, HEIC, 3024, 4032},
		{"heic", 2, 4032, 3024, HEIC, 4032, 3024},
		{"avif", -1, 640, 480, AVIF, 640, 480},
	} {
		info, err := r.Probe(heifHeader(c.brand, c.w, c.h, c.rot))
		if err != nil {
			t.Fatalf("%s irot %d: %v", c.brand, c.rot, err)
		}
		if info.Format != c.wantFmt || info.Width != c.wantW || info.Height != c.wH || info.Orientation != 1 {
			t.Errorf("%s irot %d: got %+v, want %s %dx%d orientation 1", c.brand, c.rot, info, c.wantFmt, c.wantW, c.wH)
		}
		if floor := heifMemory(c.wantFmt, 0, c.w, c.h); info.Memory < floor {
			t.Errorf("%s: memory estimate %d under the decoder's %d", c.brand, info.Memory, floor)
		}
	}
}
