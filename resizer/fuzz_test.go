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
