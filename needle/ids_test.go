package needle

import (
	"errors"
	"testing"
)

func TestPhotoIDRoundTrip(t *testing.T) {
	id := PhotoID{Vid: 7, Key: 0x1f4a9, Cookie: 0x8c3e77d2a1b0c4f5}
	if s := id.String(); s != "7-1f4a9-8c3e77d2a1b0c4f5" {
		t.Fatalf("String = %q", s)
	}
	for _, want := range []PhotoID{id, {Vid: 0, Key: 1, Cookie: 0}, {Vid: ^uint32(0), Key: ^uint64(0), Cookie: ^uint64(0)}} {
		got, err := ParsePhotoID(want.String())
		if err != nil || got != want {
			t.Fatalf("%v: got %v %v", want, got, err)
		}
	}
}

func TestParsePhotoIDRejects(t *testing.T) {
	for _, s := range []string{
		"", "7", "7-1f4a9", "7-1f4a9-", "7-0-8c3e77d2a1b0c4f5", "07-1f4a9-8c3e77d2a1b0c4f5",
		"7-01f4a9-8c3e77d2a1b0c4f5", "7-1F4A9-8c3e77d2a1b0c4f5", "7-1f4a9-8C3E77D2A1B0C4F5",
		"7-1f4a9-8c3e77d2a1b0c4f", "7-1f4a9-8c3e77d2a1b0c4f50", "-7-1f4a9-8c3e77d2a1b0c4f5",
		"+7-1f4a9-8c3e77d2a1b0c4f5", "4294967296-1-0000000000000000", "7-10000000000000000-0000000000000000",
		"7-1f4a9-8c3e77d2a1b0c4f5-1", "7-xyz-8c3e77d2a1b0c4f5", "7-1f4a9-8c3e77d2a1b0c4g5",
	} {
		if _, err := ParsePhotoID(s); !errors.Is(err, ErrBadID) {
			t.Errorf("ParsePhotoID(%q) = %v, want ErrBadID", s, err)
		}
	}
}

func TestImagePath(t *testing.T) {
	id := PhotoID{Vid: 7, Key: 0x1f4a9, Cookie: 0x8c3e77d2a1b0c4f5}
	if p := ImagePath(id, SizeMedium, "jpg"); p != "/p/7-1f4a9-8c3e77d2a1b0c4f5/m.jpg" {
		t.Fatalf("ImagePath = %q", p)
	}
	cases := []struct {
		path string
		size SizeCode
		ext  string
	}{
		{"/p/7-1f4a9-8c3e77d2a1b0c4f5/m.jpg", SizeMedium, "jpg"},
		{"/p/7-1f4a9-8c3e77d2a1b0c4f5/t", SizeThumb, ""},
		{"/p/7-1f4a9-8c3e77d2a1b0c4f5/l.webp", SizeLargeWebP, "webp"},
		{"/p/7-1f4a9-8c3e77d2a1b0c4f5/t.WEBP", SizeThumbWebP, "WEBP"},
		{"/p/7-1f4a9-8c3e77d2a1b0c4f5/s.jpeg", SizeSmall, "jpeg"},
		{"/p/7-1f4a9-8c3e77d2a1b0c4f5/m.png", SizeMedium, "png"},
		{"/p/7-1f4a9-8c3e77d2a1b0c4f5/o.PNG", SizeOriginal, "PNG"},
		// The original has no WebP variant: its extension stays cosmetic.
		{"/p/7-1f4a9-8c3e77d2a1b0c4f5/o.webp", SizeOriginal, "webp"},
	}
	for _, c := range cases {
		gotID, size, ext, err := ParseImagePath(c.path)
		if err != nil || gotID != id || size != c.size || ext != c.ext {
			t.Errorf("%s: %v %v %q %v", c.path, gotID, size, ext, err)
		}
	}
	for _, p := range []string{
		"", "/", "/p/", "/p/7-1f4a9-8c3e77d2a1b0c4f5", "/p/7-1f4a9-8c3e77d2a1b0c4f5/",
		"/p/7-1f4a9-8c3e77d2a1b0c4f5/x", "/p/7-1f4a9-8c3e77d2a1b0c4f5/mm", "/p/7-1f4a9-8c3e77d2a1b0c4f5/m.",
		"/p/7-1f4a9-8c3e77d2a1b0c4f5/m.j/g", "/p/7-1f4a9-8c3e77d2a1b0c4f5/m.jpg.jpg", "/q/7-1f4a9-8c3e77d2a1b0c4f5/m",
		"/p/7-1f4a9-8c3e77d2a1b0c4f5/m/extra", "/p/bad/m", "/p/7-1f4a9-8c3e77d2a1b0c4f5/m.verylongext",
	} {
		if _, _, _, err := ParseImagePath(p); !errors.Is(err, ErrBadID) {
			t.Errorf("ParseImagePath(%q) = %v, want ErrBadID", p, err)
		}
	}
}

func TestWebPSizeCodes(t *testing.T) {
	id := PhotoID{Vid: 7, Key: 0x1f4a9, Cookie: 0x8c3e77d2a1b0c4f5}
	for i, base := range PhotoSizes {
		w, ok := base.WebP()
		if !ok || w != WebPSizes[i] || w != base+8 || !w.IsWebP() || base.IsWebP() {
			t.Fatalf("%v: WebP() = %v %v", base, w, ok)
		}
		if w.Base() != base || base.Base() != base || w.Letter() != base.Letter() || !w.Valid() {
			t.Fatalf("%v: Base %v Letter %q Valid %v", w, w.Base(), w.Letter(), w.Valid())
		}
		if w.String() != base.Letter()+".webp" {
			t.Fatalf("String = %q", w.String())
		}
		if w2, ok := w.WebP(); !ok || w2 != w {
			t.Fatalf("%v.WebP() = %v %v", w, w2, ok)
		}
		if p := ImagePath(id, w, ""); p != "/p/7-1f4a9-8c3e77d2a1b0c4f5/"+base.Letter()+".webp" {
			t.Fatalf("ImagePath = %q", p)
		}
	}
	valid := 0
	for c := SizeCode(0); c < 64; c++ {
		if c.Valid() {
			if valid >= len(StoredSizes) || StoredSizes[valid] != c {
				t.Fatalf("StoredSizes %v does not list valid code %d in order", StoredSizes, c)
			}
			valid++
		}
	}
	if valid != len(StoredSizes) {
		t.Fatalf("StoredSizes %v lists codes that are not valid", StoredSizes)
	}
	if _, ok := SizeOriginal.WebP(); ok {
		t.Fatal("the original has a WebP variant")
	}
	for _, c := range []SizeCode{5, 6, 7, 12, 13, 0xFFFFFFFE} {
		if c.Valid() || c.IsWebP() || c.Letter() != "" {
			t.Errorf("size code %d: Valid %v IsWebP %v Letter %q", c, c.Valid(), c.IsWebP(), c.Letter())
		}
	}
}

func TestSizeLetters(t *testing.T) {
	for i, l := range []string{"t", "s", "m", "l", "o"} {
		s, err := ParseSizeLetter(l)
		if err != nil || s != SizeCode(i) || s.Letter() != l || !s.Valid() {
			t.Fatalf("%s: %v %v", l, s, err)
		}
	}
	if SizeAll.Valid() || SizeAll.Letter() != "" || SizeAll.String() != "all" {
		t.Fatal("SizeAll")
	}
}

func TestContentTypes(t *testing.T) {
	for ct := TypeJPEG; ct <= TypeWebP; ct++ {
		if ContentTypeFromMIME(ct.MIME()) != ct || ct.Ext() == "" {
			t.Fatalf("type %d", ct)
		}
	}
	if ContentType(99).Valid() || ContentType(99).MIME() != "application/octet-stream" {
		t.Fatal("unknown type")
	}
	if ContentTypeFromMIME("text/html") != TypeUnknown {
		t.Fatal("text/html")
	}
}
