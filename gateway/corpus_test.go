package gateway

import (
	"image"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/haybale/haybale/internal/imagetest"
)

// corpusCase is the outcome MANIFEST.md requires for one file of the photo
// corpus.
type corpusCase struct {
	file string
	// w, h is the upright size of an accepted file.
	w, h int
	// status is the answer to a rejected file; 0 for accepted files.
	status int
	// big marks files over 5 MP.
	big bool
}

// corpus mirrors the tables of MANIFEST.md (development set). Where the
// manifest allows two statuses, the comment says which one the gateway
// gives.
var corpus = []corpusCase{
	{file: "seeding_by_Clements_Engelhardt.jpg", w: 5312, h: 2988, big: true},
	{file: "sunset_by_Aitzol_Berasategi.jpg", w: 4272, h: 2848, big: true},
	{file: "Wine_by_Jakkub_Mede.jpg", w: 2560, h: 3837, big: true},
	{file: "jolla.jpg", w: 3264, h: 2448, big: true},
	{file: "42_IndexError.jpg", w: 4032, h: 3024, big: true},
	{file: "ultra-hdr.jpg", w: 3840, h: 2160, big: true},
	{file: "canon_hdr_NO.jpg", w: 1536, h: 2048}, // EXIF 6
	{file: "Storm.jpg", w: 1920, h: 1280},
	{file: "Landscape_9.jpg", w: 480, h: 369},
	{file: "Canon_40D.jpg", w: 100, h: 68},
	{file: "Landscape_1.jpg", w: 1800, h: 1200},
	{file: "Landscape_2.jpg", w: 1800, h: 1200},
	{file: "Landscape_3.jpg", w: 1800, h: 1200},
	{file: "Landscape_4.jpg", w: 1800, h: 1200},
	{file: "Landscape_5.jpg", w: 1800, h: 1200},
	{file: "Landscape_6.jpg", w: 1800, h: 1200},
	{file: "Landscape_7.jpg", w: 1800, h: 1200},
	{file: "Landscape_8.jpg", w: 1800, h: 1200},
	{file: "Channel_digital_image_CMYK_color.jpg", w: 500, h: 333},
	{file: "concert.jpg", w: 400, h: 267},
	{file: "Arc-Colors-Transparent-Wallpaper.png", w: 2140, h: 1200},
	{file: "embedgravitybird.png", w: 576, h: 384},
	{file: "sample.png", w: 290, h: 442},
	{file: "indexed.png", w: 290, h: 442},
	{file: "harvesters.gif", w: 1165, h: 859},
	{file: "gifplayer-muybridge.gif", w: 472, h: 298},
	{file: "4.webp", w: 1024, h: 772},
	{file: "harvesters.lossless.webp", w: 1165, h: 859},
	{file: "5_webp_a.webp", w: 300, h: 300},
	{file: "animated-loop-3.webp", status: http.StatusUnsupportedMediaType}, // 415 (422 allowed)
	{file: "iphone_13_pro_max.HEIC", w: 3024, h: 4032, big: true},           // irot 270°
	{file: "avif-orientation-6.avif", w: 3024, h: 4032, big: true},
	{file: "tifftag-photoshop.tiff", status: http.StatusUnsupportedMediaType},
	{file: "giant-image.jpg", status: http.StatusRequestEntityTooLarge}, // 280 MP (422 allowed)
	{file: "testimgl.jpg", status: http.StatusUnsupportedMediaType},     // lossless JPEG (422 allowed)

	{file: "evil/empty.jpg", status: http.StatusBadRequest},
	{file: "evil/not-an-image.jpg", status: http.StatusUnsupportedMediaType},
	{file: "evil/truncated-50pct.jpg", status: http.StatusUnprocessableEntity}, // (400 allowed)
	{file: "evil/corrupt-entropy.jpg", status: http.StatusUnprocessableEntity},
	{file: "evil/bomb-50000x50000.png", status: http.StatusRequestEntityTooLarge},
	{file: "evil/header-65500x65500.jpg", status: http.StatusRequestEntityTooLarge},
	{file: "evil/bad-crc-idat.png", status: http.StatusUnprocessableEntity},
	{file: "evil/gif-65535x65535-5000frames.gif", status: http.StatusRequestEntityTooLarge},
	{file: "evil/jpeg-plus-5MiB-junk.jpg", w: 1800, h: 1200},
	{file: "evil/random-1MiB.jpg", status: http.StatusUnsupportedMediaType},
}

// TestCorpus uploads every file of the photo corpus through the gateway
// and checks the outcome MANIFEST.md states: accepted files give four
// stored images of the size table's dimensions for the upright photo;
// rejected files give their status with a JSON error, write nothing, and
// leave the gateway answering.
func TestCorpus(t *testing.T) {
	dir := os.Getenv("HAYBALE_PHOTOS")
	if dir == "" {
		t.Skip("HAYBALE_PHOTOS is not set; set it to the photo corpus folder (CI: ../shared/photos) to run this")
	}
	e := startEnv(t, envOptions{stores: 2, replication: 2})
	small := map[string]image.Image{} // the s image of each accepted file
	for _, c := range corpus {
		t.Run(c.file, func(t *testing.T) {
			// Decoding and resizing a 10-16 MP photo takes several seconds
			// under the race detector and adds nothing the smaller files do
			// not already cover (the gateway treats every accepted file
			// alike), so only runs without -race upload them.
			if c.big && raceEnabled {
				t.Skip("skipping a >5 MP photo under -race; run without -race to upload it")
			}
			data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(c.file)))
			if err != nil {
				t.Fatal(err)
			}
			before := volumeBytes(e.c)
			a := e.uploadRaw(t, data, nil)
			if c.status != 0 {
				if a.status != c.status {
					t.Fatalf("HTTP %d %s, want %d", a.status, a.body, c.status)
				}
				t.Logf("%d: %s", a.status, a.errorMessage(t))
				if after := volumeBytes(e.c); after != before {
					t.Errorf("the rejected upload wrote %d bytes", after-before)
				}
				if h := do(t, http.MethodGet, e.url+"/healthz", nil, nil); h.status != http.StatusOK {
					t.Errorf("/healthz after the rejection: HTTP %d", h.status)
				}
				return
			}
			if a.status != http.StatusCreated {
				t.Fatalf("HTTP %d %s, want 201", a.status, a.body)
			}
			var up UploadResponse
			a.decode(t, &up)
			small[c.file] = e.checkStored(t, up, c.w, c.h)[1]
		})
	}
	// The orientation set: once upright, every Landscape_N looks like
	// Landscape_1.
	ref := small["Landscape_1.jpg"]
	for n := 2; n <= 8; n++ {
		name := "Landscape_" + string(rune('0'+n)) + ".jpg"
		if ref == nil || small[name] == nil {
			continue
		}
		if d := imagetest.MeanAbsDiff(ref, small[name]); d > 6 {
			t.Errorf("%s: s differs from Landscape_1's by %.1f per channel on average; not upright?", name, d)
		}
	}
}
