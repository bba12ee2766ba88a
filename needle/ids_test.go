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
		{"/p/7-1f4a9-8c3e77d2a1b0c4f5/l.webp", SizeLarge, "webp"},
		{"/p/7-1f4a9-8c3e77d2a1b0c4f5/o.PNG", SizeOriginal, "PNG"},
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
