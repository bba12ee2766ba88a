package needle

import (
	"bytes"
	"testing"
)

// FuzzDecode checks that decoding never panics, that everything rejected is
// a corruption error, and that whatever decodes re-encodes to the same
// bytes. Seeds live in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	for _, n := range []*Needle{
		sample(SizeThumb, TypeJPEG, []byte("seed")),
		{Key: 1, Flags: FlagTombstone, Size: SizeAll},
	} {
		b, _ := Append(nil, n)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := Decode(b)
		if err != nil {
			if !IsCorruption(err) {
				t.Fatalf("rejection is not a corruption error: %v", err)
			}
			return
		}
		again, err := Append(nil, &n)
		if err != nil {
			t.Fatalf("decoded needle does not re-encode: %v", err)
		}
		body := HeaderSize + len(n.Data) + FooterSize
		if !bytes.Equal(again[:body], b[:body]) {
			t.Fatal("re-encoding differs")
		}
	})
}

// FuzzParseImagePath checks that path parsing never panics and that every
// accepted path is canonical: formatting what was parsed gives it back.
// Seeds live in testdata/fuzz/FuzzParseImagePath.
func FuzzParseImagePath(f *testing.F) {
	f.Add("/p/7-1f4a9-8c3e77d2a1b0c4f5/m.jpg")
	f.Fuzz(func(t *testing.T, p string) {
		id, size, ext, err := ParseImagePath(p)
		if err != nil {
			return
		}
		if got := ImagePath(id, size, ext); got != p {
			t.Fatalf("%q parsed then formatted as %q", p, got)
		}
	})
}

// FuzzParsePhotoID checks that ID parsing never panics and round-trips.
// Seeds live in testdata/fuzz/FuzzParsePhotoID.
func FuzzParsePhotoID(f *testing.F) {
	f.Add("7-1f4a9-8c3e77d2a1b0c4f5")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParsePhotoID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("%q parsed then formatted as %q", s, id.String())
		}
	})
}
