package resizer

import (
	"context"
	"encoding/binary"
	"testing"
)

// FuzzProcess feeds arbitrary bytes to Process. The seed corpus in
// testdata/fuzz/FuzzProcess holds tiny valid and damaged files of every
// accepted format. Process must not panic (a recovered panic would show as
// an error of no class), every error must belong to exactly one class, and
// every success must give four decodable, metadata-free outputs of the
// table's sizes.
func FuzzProcess(f *testing.F) {
	// A small pixel limit keeps each execution fast.
	r := New(Options{MaxPixels: 1 << 20, MaxConcurrent: 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := r.Process(context.Background(), data)
		if err != nil {
			if len(classes(err)) != 1 {
				t.Fatalf("error of no single class: %v", err)
			}
			return
		}
		checkOutputs(t, res, Dimensions(res.Width, res.Height))
	})
}

// FuzzScanJPEG checks the EXIF and marker parser on arbitrary headers.
func FuzzScanJPEG(f *testing.F) {
	for o := 0; o <= 9; o++ {
		f.Add(append([]byte{0xFF, 0xD8}, exifSegment(exifTIFF(binary.BigEndian, o, o%2 == 0))...))
		f.Add(append([]byte{0xFF, 0xD8}, exifSegment(exifTIFF(binary.LittleEndian, o, o%2 == 1))...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h := scanJPEG(data)
		if h.orientation < 0 || h.orientation > 8 {
			t.Fatalf("orientation %d", h.orientation)
		}
	})
}

// FuzzHEIFHeader checks the HEIF box parser, the ICC readers and the
// JPEG stripper on arbitrary bytes: no panic, and a size read from a HEIF
// is never negative.
func FuzzHEIFHeader(f *testing.F) {
	f.Add(heifHeader("heic", 4032, 3024, 1))
	f.Add(heifHeader("avif", 64, 48, -1))
	f.Add(heifHeader("heic", -1, -1, 3))
	f.Add(jpegWithICC([]byte{0xFF, 0xD8, 0xFF, 0xD9}, testProfile("Display P3")))
	f.Fuzz(func(t *testing.T, data []byte) {
		if hi, err := readHEIF(data); err == nil && (hi.width < 0 || hi.height < 0) {
			t.Fatalf("negative size %dx%d", hi.width, hi.height)
		}
		for _, format := range []Format{JPEG, PNG, WebP, HEIC} {
			carriedICC(format, data)
		}
		jh := scanJPEG(data)
		strippedJPEG(data, &jh)
	})
}
