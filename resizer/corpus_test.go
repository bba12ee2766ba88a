package resizer

import (
	"bytes"
	"context"
	"errors"
	"image"
	"os"
	"path/filepath"
	"testing"
)

// photosDir returns the photo corpus folder named by HAYBALE_PHOTOS, or
// skips the test.
func photosDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("HAYBALE_PHOTOS")
	if dir == "" {
		tb.Skip("HAYBALE_PHOTOS is not set; set it to the photo corpus folder (CI: ../shared/photos) to run this")
	}
	return dir
}

// corpusCase is the outcome MANIFEST.md requires for one file.
type corpusCase struct {
	file string
	// w, h is the upright size of an accepted file.
	w, h int
	// contentType, when set, is the required output type.
	contentType string
	// reject is the error class of a rejected file.
	reject error
	// big marks files over 5 MP, skipped under the race detector and
	// -short.
	big bool
}

// corpus mirrors the tables of MANIFEST.md (development set). Manifest
// statuses map to classes: 400 ErrEmpty, 413 ErrTooLarge, 415
// ErrUnsupported, 422 ErrCorrupt. Where the manifest allows two statuses,
// the comment says which one this package gives.
var corpus = []corpusCase{
	{file: "seeding_by_Clements_Engelhardt.jpg", w: 5312, h: 2988, contentType: "image/jpeg", big: true},
	{file: "sunset_by_Aitzol_Berasategi.jpg", w: 4272, h: 2848, contentType: "image/jpeg", big: true},
	{file: "Wine_by_Jakkub_Mede.jpg", w: 2560, h: 3837, contentType: "image/jpeg", big: true},
	{file: "jolla.jpg", w: 3264, h: 2448, contentType: "image/jpeg", big: true},
	{file: "42_IndexError.jpg", w: 4032, h: 3024, contentType: "image/jpeg", big: true},
	{file: "ultra-hdr.jpg", w: 3840, h: 2160, contentType: "image/jpeg", big: true},
	{file: "canon_hdr_NO.jpg", w: 1536, h: 2048, contentType: "image/jpeg"}, // EXIF 6
	{file: "Storm.jpg", w: 1920, h: 1280, contentType: "image/jpeg"},
	{file: "Landscape_9.jpg", w: 480, h: 369, contentType: "image/jpeg"},
	{file: "Canon_40D.jpg", w: 100, h: 68, contentType: "image/jpeg"},
	{file: "Landscape_1.jpg", w: 1800, h: 1200, contentType: "image/jpeg"},
	{file: "Landscape_2.jpg", w: 1800, h: 1200, contentType: "image/jpeg"},
	{file: "Landscape_3.jpg", w: 1800, h: 1200, contentType: "image/jpeg"},
	{file: "Landscape_4.jpg", w: 1800, h: 1200, contentType: "image/jpeg"},
	{file: "Landscape_5.jpg", w: 1800, h: 1200, contentType: "image/jpeg"},
	{file: "Landscape_6.jpg", w: 1800, h: 1200, contentType: "image/jpeg"},
	{file: "Landscape_7.jpg", w: 1800, h: 1200, contentType: "image/jpeg"},
	{file: "Landscape_8.jpg", w: 1800, h: 1200, contentType: "image/jpeg"},
	{file: "Channel_digital_image_CMYK_color.jpg", w: 500, h: 333, contentType: "image/jpeg"},
	{file: "concert.jpg", w: 400, h: 267, contentType: "image/jpeg"},
	{file: "Arc-Colors-Transparent-Wallpaper.png", w: 2140, h: 1200, contentType: "image/png"},
	{file: "embedgravitybird.png", w: 576, h: 384, contentType: "image/jpeg"}, // alpha 255 everywhere
	{file: "sample.png", w: 290, h: 442, contentType: "image/jpeg"},
	{file: "indexed.png", w: 290, h: 442},
	{file: "harvesters.gif", w: 1165, h: 859},
	{file: "gifplayer-muybridge.gif", w: 472, h: 298},
	{file: "4.webp", w: 1024, h: 772, contentType: "image/jpeg"},
	{file: "harvesters.lossless.webp", w: 1165, h: 859},
	{file: "5_webp_a.webp", w: 300, h: 300, contentType: "image/png"},
	{file: "animated-loop-3.webp", reject: ErrUnsupported},                                   // 415 (422 allowed)
	{file: "iphone_13_pro_max.HEIC", w: 3024, h: 4032, contentType: "image/jpeg", big: true}, // irot 270°
	{file: "avif-orientation-6.avif", w: 3024, h: 4032, contentType: "image/jpeg", big: true},
	{file: "tifftag-photoshop.tiff", reject: ErrUnsupported},
	{file: "giant-image.jpg", reject: ErrTooLarge},
	{file: "testimgl.jpg", reject: ErrUnsupported}, // lossless JPEG: 415 (422 allowed)

	{file: "evil/empty.jpg", reject: ErrEmpty},
	{file: "evil/not-an-image.jpg", reject: ErrUnsupported},
	{file: "evil/truncated-50pct.jpg", reject: ErrCorrupt},
	{file: "evil/corrupt-entropy.jpg", reject: ErrCorrupt},
	{file: "evil/bomb-50000x50000.png", reject: ErrTooLarge},
	{file: "evil/header-65500x65500.jpg", reject: ErrTooLarge},
	{file: "evil/bad-crc-idat.png", reject: ErrCorrupt},
	{file: "evil/gif-65535x65535-5000frames.gif", reject: ErrTooLarge},
	{file: "evil/jpeg-plus-5MiB-junk.jpg", w: 1800, h: 1200, contentType: "image/jpeg"},
	{file: "evil/random-1MiB.jpg", reject: ErrUnsupported},
}

// TestCorpus checks every file of the manifest against its required outcome.
func TestCorpus(t *testing.T) {
	dir := photosDir(t)
	r := New(Options{})
	results := map[string]*Result{}
	for _, c := range corpus {
		t.Run(c.file, func(t *testing.T) {
			if c.big && (raceEnabled || testing.Short()) {
				t.Skip("skipping a >5 MP decode under -race or -short; the smaller files cover the same paths")
			}
			data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(c.file)))
			if err != nil {
				t.Fatal(err)
			}
			res, err := r.Process(context.Background(), data)
			if c.reject != nil {
				if !errors.Is(err, c.reject) {
					t.Fatalf("got %v, want an error wrapping %v", err, c.reject)
				}
				t.Logf("rejected: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if res.Width != c.w || res.Height != c.h {
				t.Errorf("upright size %dx%d, want %dx%d", res.Width, res.Height, c.w, c.h)
			}
			checkOutputs(t, res, expectedDims(c.w, c.h))
			if c.contentType != "" && res.Images[0].ContentType != c.contentType {
				t.Errorf("content type %s, want %s", res.Images[0].ContentType, c.contentType)
			}
			results[c.file] = res
		})
	}

	// The EXIF orientation set: every file must look like Landscape_1 once
	// upright.
	ref := results["Landscape_1.jpg"]
	for n := 2; n <= 8; n++ {
		name := "Landscape_" + string(rune('0'+n)) + ".jpg"
		if ref == nil || results[name] == nil {
			continue
		}
		if d := meanAbsDiff(t, ref.Images[1], results[name].Images[1]); d > 6 {
			t.Errorf("%s: s differs from Landscape_1's by %.1f per channel on average; orientation not applied?", name, d)
		}
	}
	// Trailing junk is ignored: the outputs equal those of the clean file.
	if junk := results["evil/jpeg-plus-5MiB-junk.jpg"]; ref != nil && junk != nil {
		for i := range junk.Images {
			if !bytes.Equal(junk.Images[i].Data, ref.Images[i].Data) {
				t.Errorf("jpeg-plus-5MiB-junk.jpg: %s differs from Landscape_1.jpg's", junk.Images[i].Letter)
			}
		}
	}
}

// expectedDims is the size table computed independently of Dimensions, in
// floating point.
func expectedDims(w, h int) [NumSizes]image.Point {
	var d [NumSizes]image.Point
	side := min(150, w, h)
	d[0] = image.Pt(side, side)
	for i, box := range []int{480, 1080, 2048} {
		if w <= box && h <= box {
			d[i+1] = image.Pt(w, h)
			continue
		}
		long := float64(max(w, h))
		dw := max(1, int(float64(w)*float64(box)/long+0.5))
		dh := max(1, int(float64(h)*float64(box)/long+0.5))
		d[i+1] = image.Pt(min(dw, box), min(dh, box))
	}
	return d
}

func TestDimensionsMatchFloat(t *testing.T) {
	for _, c := range corpus {
		if c.reject == nil {
			if got, want := Dimensions(c.w, c.h), expectedDims(c.w, c.h); got != want {
				t.Errorf("%s: %v, want %v", c.file, got, want)
			}
		}
	}
}
