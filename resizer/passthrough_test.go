package resizer

import (
	"bytes"
	"context"
	"encoding/binary"
	"image/jpeg"
	"os"
	"path/filepath"
	"testing"
)

// TestPassthrough checks the rule of passthrough.go: a JPEG upload at
// quality 70 that fits s, m and l is stored as itself for those sizes,
// stripped of its metadata (the EXIF with GPS is gone) and of the bytes
// after EOI, and decodes to the same pixels; one at quality 95, or one
// that needs turning upright, is re-encoded.
func TestPassthrough(t *testing.T) {
	src := photoLike(400, 300, 3)
	q70 := encodeJPEG(t, src, 70)
	withMeta := withSegments(q70,
		segment(0xE0, []byte("JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")),
		exifSegment(exifTIFF(binary.BigEndian, 1, true)),
		segment(0xFE, []byte("a comment")))
	withMeta = append(withMeta, []byte("trailing junk after EOI")...)
	res, err := New(Options{NoWebP: true}).Process(context.Background(), withMeta)
	if err != nil {
		t.Fatal(err)
	}
	for code := 1; code < NumSizes; code++ {
		out := res.Images[code]
		if !out.Source || !bytes.Equal(out.Data, q70) {
			t.Errorf("%s: source %v, %d bytes; want the upload's own %d bytes", out.Letter, out.Source, len(out.Data), len(q70))
		}
	}
	if res.Images[0].Source {
		t.Error("t, a crop, was taken from the source")
	}
	a, _ := jpeg.Decode(bytes.NewReader(q70))
	b, err := jpeg.Decode(bytes.NewReader(res.Images[3].Data))
	if err != nil || a.Bounds() != b.Bounds() {
		t.Fatalf("the stored l does not decode as the upload: %v", err)
	}

	for name, data := range map[string][]byte{
		"quality 95": encodeJPEG(t, src, 95),
		"oriented":   withSegments(q70, exifSegment(exifTIFF(binary.LittleEndian, 6, false))),
	} {
		res, err := New(Options{NoWebP: true}).Process(context.Background(), data)
		if err != nil {
			t.Fatal(err)
		}
		for _, out := range res.Images {
			if out.Source {
				t.Errorf("%s: %s was taken from the source", name, out.Letter)
			}
		}
	}
}

// TestPassthroughCorpus reports the bytes the rule saves on the corpus
// photos it applies to.
func TestPassthroughCorpus(t *testing.T) {
	dir := photosDir(t)
	var before, after int
	for _, c := range corpus {
		if c.reject != nil || c.big {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, c.file))
		if err != nil {
			t.Fatal(err)
		}
		withRule, err := New(Options{NoWebP: true}).Process(context.Background(), data)
		if err != nil {
			t.Fatal(err)
		}
		for code := 1; code < NumSizes; code++ {
			out := withRule.Images[code]
			if !out.Source {
				continue
			}
			img, _ := jpeg.Decode(bytes.NewReader(data))
			var re bytes.Buffer
			if err := jpeg.Encode(&re, img, &jpeg.Options{Quality: JPEGQuality}); err != nil {
				t.Fatal(err)
			}
			t.Logf("%-26s %s %4dx%-4d re-encoded %7d B, own data %7d B (%+.1f%%)", c.file, out.Letter,
				out.Width, out.Height, re.Len(), len(out.Data), 100*float64(len(out.Data)-re.Len())/float64(re.Len()))
			before += re.Len()
			after += len(out.Data)
		}
	}
	if before == 0 {
		t.Fatal("the rule applied to no corpus photo; Landscape_1.jpg (quality 73, 1800x1200) should fit l")
	}
	t.Logf("corpus: %d B re-encoded, %d B as stored, %.1f%% saved", before, after, 100*(1-float64(after)/float64(before)))
}
