package resizer

import (
	"bytes"
	"context"
	"encoding/binary"
	"image"
	"image/color"
	"image/jpeg"
	"testing"

	gwebp "github.com/gen2brain/webp"
)

// testProfile builds a small but well-formed ICC profile header with one
// 'desc' tag (v2 textDescriptionType) naming desc.
func testProfile(desc string) []byte {
	text := append([]byte("desc\x00\x00\x00\x00"), binary.BigEndian.AppendUint32(nil, uint32(len(desc)+1))...)
	text = append(append(text, desc...), 0)
	p := make([]byte, 128)
	copy(p[36:], "acsp")
	copy(p[12:], "mntrRGB XYZ ")
	p = binary.BigEndian.AppendUint32(p, 1) // tag count
	p = append(p, "desc"...)
	p = binary.BigEndian.AppendUint32(p, 144) // offset: 128 + 4 + 12
	p = binary.BigEndian.AppendUint32(p, uint32(len(text)))
	p = append(p, text...)
	binary.BigEndian.PutUint32(p, uint32(len(p)))
	return p
}

// saturatedJPEG returns a w×h JPEG of one fully saturated red, tagged with
// icc when it is not nil.
func saturatedJPEG(t *testing.T, w, h int, icc []byte) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+3] = 255, 255
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 95}); err != nil {
		t.Fatal(err)
	}
	if icc == nil {
		return buf.Bytes()
	}
	return jpegWithICC(buf.Bytes(), icc)
}

// TestDisplayP3ProfileCarried checks that a Display P3 photo keeps its
// colours: every JPEG and WebP output carries the upload's profile, byte
// for byte, and the saturated P3 red keeps its pixel values (within the
// lossy coding's error), so a colour-managed browser shows the colour of
// the upload.
func TestDisplayP3ProfileCarried(t *testing.T) {
	p3 := testProfile("Display P3")
	if iccIsSRGB(p3) {
		t.Fatal("the P3 test profile reads as sRGB")
	}
	res, err := New(Options{}).Process(context.Background(), saturatedJPEG(t, 640, 400, p3))
	if err != nil {
		t.Fatal(err)
	}
	checkOutputs(t, res, Dimensions(640, 400))
	for _, out := range res.Images {
		if got := jpegICC(out.Data); !bytes.Equal(got, p3) {
			t.Errorf("%s: JPEG carries a %d-byte profile, want the %d-byte upload's", out.Letter, len(got), len(p3))
		}
		if got := webpICC(out.WebP); !bytes.Equal(got, p3) {
			t.Errorf("%s: WebP carries a %d-byte profile, want the %d-byte upload's", out.Letter, len(got), len(p3))
		}
		for name, data := range map[string][]byte{"JPEG": out.Data, "WebP": out.WebP} {
			var m image.Image
			if name == "JPEG" {
				m, err = jpeg.Decode(bytes.NewReader(data))
			} else {
				m, err = decodeWebP(data)
			}
			if err != nil {
				t.Fatalf("%s %s: %v", out.Letter, name, err)
			}
			tol := uint8(10)
			c := color.NRGBAModel.Convert(m.At(out.Width/2, out.Height/2)).(color.NRGBA)
			if c.R < 255-tol || c.G > tol || c.B > tol {
				t.Errorf("%s %s: centre is %v, want the saturated red 255,0,0 within %d", out.Letter, name, c, tol)
			}
		}
	}
}

// TestSRGBProfileDropped checks that an sRGB profile, which browsers
// assume anyway, is not copied, nor a gray one (the outputs are RGB), and
// that a malformed one is ignored.
func TestSRGBProfileDropped(t *testing.T) {
	gray := testProfile("Dot Gain 20%")
	copy(gray[16:], "GRAY")
	for name, icc := range map[string][]byte{
		"sRGB":      testProfile("sRGB IEC61966-2.1"),
		"gray":      gray,
		"too short": []byte("ICC"),
		"too large": append(testProfile("Huge"), make([]byte, MaxICCBytes)...),
	} {
		res, err := New(Options{NoWebP: true}).Process(context.Background(), saturatedJPEG(t, 64, 64, icc))
		if err != nil {
			t.Fatal(err)
		}
		for _, out := range res.Images {
			if got := jpegICC(out.Data); got != nil {
				t.Errorf("%s: %s carries a %d-byte profile", name, out.Letter, len(got))
			}
			if out.WebP != nil {
				t.Errorf("%s: %s has a WebP with NoWebP set", name, out.Letter)
			}
		}
	}
}

// TestICCReaders checks the profile readers of each container.
func TestICCReaders(t *testing.T) {
	p3 := testProfile("Display P3")
	big := append(bytes.Clone(p3), make([]byte, 70000)...) // two APP2 chunks
	if got := jpegICC(jpegWithICC(saturatedJPEG(t, 8, 8, nil), big)); !bytes.Equal(got, big) {
		t.Errorf("a two-chunk JPEG profile read back as %d bytes, want %d", len(got), len(big))
	}
	var wb bytes.Buffer
	opaque := image.NewNRGBA(image.Rect(0, 0, 5, 3))
	for i := range opaque.Pix {
		opaque.Pix[i] = 255
	}
	if err := gwebp.Encode(&wb, opaque, gwebp.Options{Quality: 50}); err != nil {
		t.Fatal(err)
	}
	odd := append(bytes.Clone(p3), 7) // an odd length needs a pad byte
	tagged := webpWithICC(wb.Bytes(), odd, 5, 3, false)
	if got := webpICC(tagged); !bytes.Equal(got, odd) {
		t.Errorf("WebP profile read back as %d bytes, want %d", len(got), len(odd))
	}
	if m, err := gwebp.Decode(bytes.NewReader(tagged)); err != nil || m.Bounds().Dx() != 5 || m.Bounds().Dy() != 3 {
		t.Errorf("the tagged WebP decodes as %v, %v", m, err)
	}
	if jpegICC(saturatedJPEG(t, 8, 8, nil)) != nil || webpICC(wb.Bytes()) != nil {
		t.Error("a profile was found in an untagged file")
	}
}

// TestWebPUploadColours checks that a lossy WebP upload keeps its
// colours: a saturated red and a mid grey come out of the JPEG outputs as
// they went into the WebP, not with the limited-range planes read as full
// range (which gives about 238,14,13 and a shifted grey).
func TestWebPUploadColours(t *testing.T) {
	img := image.NewNRGBA(image.Rect(0, 0, 256, 128))
	for y := range 128 {
		for x := range 256 {
			c := color.NRGBA{255, 0, 0, 255}
			if x >= 128 {
				c = color.NRGBA{64, 64, 64, 255}
			}
			img.SetNRGBA(x, y, c)
		}
	}
	var wb bytes.Buffer
	if err := gwebp.Encode(&wb, img, gwebp.Options{Quality: 95}); err != nil {
		t.Fatal(err)
	}
	res, err := New(Options{NoWebP: true}).Process(context.Background(), wb.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	m, err := jpeg.Decode(bytes.NewReader(res.Images[3].Data))
	if err != nil {
		t.Fatal(err)
	}
	red := color.NRGBAModel.Convert(m.At(32, 64)).(color.NRGBA)
	grey := color.NRGBAModel.Convert(m.At(224, 64)).(color.NRGBA)
	if red.R < 245 || red.G > 10 || red.B > 10 {
		t.Errorf("red came out as %v, want 255,0,0 within 10", red)
	}
	if d := int(grey.R) - 64; d < -4 || d > 4 {
		t.Errorf("grey 64 came out as %v", grey)
	}
}
