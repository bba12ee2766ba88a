package imagehttp

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/haybale/haybale/needle"
)

func TestParseRange(t *testing.T) {
	cases := []struct {
		h          string
		size       int64
		start, end int64
		res        RangeResult
	}{
		{"bytes=0-0", 10, 0, 1, RangeOne},
		{"bytes=0-99", 10, 0, 10, RangeOne},
		{"bytes=9-", 10, 9, 10, RangeOne},
		{"bytes=-3", 10, 7, 10, RangeOne},
		{"bytes=-30", 10, 0, 10, RangeOne},
		{"bytes= 2 - 4 ", 10, 2, 5, RangeOne},
		{"bytes=10-", 10, 0, 0, RangeUnsatisfiable},
		{"bytes=-0", 10, 0, 0, RangeUnsatisfiable},
		{"bytes=0-", 0, 0, 0, RangeUnsatisfiable},
		{"bytes=99999999999999999999999999999-", 10, 0, 0, RangeUnsatisfiable},
		{"bytes=5-4", 10, 0, 0, RangeInvalid},
		{"bytes=a-", 10, 0, 0, RangeInvalid},
		{"bytes", 10, 0, 0, RangeInvalid},
		{"bytes=0-1,3-4", 10, 0, 0, RangeIgnore},
		{"bytes=" + strings.Repeat("1", 2000) + "-", 10, 0, 0, RangeIgnore},
		{"items=0-1", 10, 0, 0, RangeIgnore},
	}
	for _, c := range cases {
		start, end, res := ParseRange(c.h, c.size)
		if res != c.res || (res == RangeOne && (start != c.start || end != c.end)) {
			t.Errorf("ParseRange(%.40q, %d) = %d, %d, %v; want %d, %d, %v", c.h, c.size, start, end, res, c.start, c.end, c.res)
		}
	}
}

func TestETagListMatch(t *testing.T) {
	const etag = `"00000000000000ab"`
	cases := []struct {
		list        string
		weak, match bool
	}{
		{etag, false, true},
		{`"x", ` + etag, false, true},
		{"W/" + etag, true, true},
		{"W/" + etag, false, false},
		{"*", false, true},
		{`"unterminated, ` + etag, true, true},
		{`"x"`, true, false},
		{"", true, false},
	}
	for _, c := range cases {
		if got := ETagListMatch([]string{c.list}, etag, c.weak); got != c.match {
			t.Errorf("ETagListMatch(%q, weak %v) = %v", c.list, c.weak, got)
		}
	}
	if got := string(AppendETag(nil, 0xab)); got != etag {
		t.Errorf("AppendETag = %s, want %s", got, etag)
	}
}

// TestServe checks the answers of Serve against the package contract.
func TestServe(t *testing.T) {
	mod := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	im := &Image{Data: []byte("0123456789abcdef"), ContentType: []string{"image/png"}, ETag: `"00000000000000ab"`,
		LastModified: mod.Format(http.TimeFormat), ModTime: mod}
	cases := []struct {
		method string
		hdr    map[string]string
		code   int
		body   string
		want   map[string]string
	}{
		{"GET", nil, 200, string(im.Data), map[string]string{"Content-Type": "image/png", "Content-Length": "16", "Etag": im.ETag,
			"Last-Modified": im.LastModified, "Cache-Control": CacheControlImmutable, "Accept-Ranges": "bytes"}},
		{"HEAD", nil, 200, "", map[string]string{"Content-Length": "16"}},
		{"GET", map[string]string{"If-None-Match": im.ETag}, 304, "", map[string]string{"Content-Type": "", "Etag": im.ETag}},
		{"GET", map[string]string{"If-Modified-Since": im.LastModified}, 304, "", nil},
		{"GET", map[string]string{"If-Match": `"zz"`}, 412, "", map[string]string{"Content-Type": "application/json"}},
		{"GET", map[string]string{"Range": "bytes=2-4"}, 206, "234", map[string]string{"Content-Range": "bytes 2-4/16", "Content-Length": "3"}},
		{"GET", map[string]string{"Range": "bytes=16-"}, 416, "", map[string]string{"Content-Range": "bytes */16", "Cache-Control": ""}},
		{"GET", map[string]string{"Range": "bytes=0-1", "If-Range": im.LastModified}, 206, "01", nil},
		{"GET", map[string]string{"Range": "bytes=0-1", "If-Range": `"old"`}, 200, string(im.Data), nil},
	}
	for _, c := range cases {
		req := httptest.NewRequest(c.method, "/p/x/t", nil)
		for k, v := range c.hdr {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		code, written := Serve(rec, req, im)
		if code != c.code || rec.Code != c.code {
			t.Errorf("%s %v: status %d/%d, want %d", c.method, c.hdr, code, rec.Code, c.code)
			continue
		}
		if c.code < 300 && (rec.Body.String() != c.body || written != len(c.body)) {
			t.Errorf("%s %v: body %q (%d written), want %q", c.method, c.hdr, rec.Body.String(), written, c.body)
		}
		for k, v := range c.want {
			if got := rec.Header().Get(k); got != v {
				t.Errorf("%s %v: %s %q, want %q", c.method, c.hdr, k, got, v)
			}
		}
	}
}

func TestErrorAnswers(t *testing.T) {
	rec := httptest.NewRecorder()
	if NotFound(rec) != 404 || rec.Header().Get("Cache-Control") != CacheControlNotFound || !bytes.Contains(rec.Body.Bytes(), []byte(`"error"`)) {
		t.Errorf("NotFound: %d %v %q", rec.Code, rec.Header(), rec.Body)
	}
	rec = httptest.NewRecorder()
	if Failure(rec, 502, ErrorUpstreamUnavailable, []byte("{}\n")) != 502 || rec.Header().Get(ErrorHeader) != ErrorUpstreamUnavailable ||
		rec.Header().Get("Cache-Control") != "no-store" || rec.Header().Get("Content-Length") != "3" {
		t.Errorf("Failure: %d %v", rec.Code, rec.Header())
	}
	rec = httptest.NewRecorder()
	if BadPath(rec, errors.New(`bad "path"`)) != 400 || rec.Body.String() != `{"error":"bad \"path\""}`+"\n" {
		t.Errorf("BadPath: %d %q", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	if MethodNotAllowed(rec, "GET, HEAD") != 405 || rec.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("MethodNotAllowed: %d %v", rec.Code, rec.Header())
	}
}

// FuzzParseRange checks that no Range or entity-tag header panics and that
// a satisfiable range always lies inside the body.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-1", "bytes=-5", "bytes=5-", "bytes=0-1,2-3", `"abc", W/"d"`, "*", "bytes=99999999999999999999-"} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			size = -size
		}
		if size < 0 {
			return
		}
		start, end, res := ParseRange(h, size)
		if res == RangeOne && (start < 0 || start >= end || end > size) {
			t.Fatalf("ParseRange(%q, %d) = [%d, %d)", h, size, start, end)
		}
		const etag = `"0123456789abcdef"`
		ETagListMatch([]string{h}, etag, true)
		ETagListMatch([]string{h}, etag, false)
		IfRangeHolds([]string{h}, etag, time.Unix(0, 0))
	})
}

// TestServeOnlyImageTypes: every image answer carries nosniff, and an
// image whose Content-Type is not an image type is never served.
func TestServeOnlyImageTypes(t *testing.T) {
	mod := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, ct := range []string{"image/jpeg", "image/png", "image/gif", "image/webp"} {
		im := &Image{Data: []byte("pixels"), ContentType: []string{ct}, ETag: `"01"`, LastModified: mod.Format(http.TimeFormat), ModTime: mod}
		for _, hdr := range []map[string]string{nil, {"Range": "bytes=0-1"}, {"If-None-Match": `"01"`}} {
			r := httptest.NewRequest(http.MethodGet, "/p/x/t", nil)
			for k, v := range hdr {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			code, _ := Serve(w, r, im)
			if w.Header().Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("%s %v: HTTP %d without nosniff", ct, hdr, code)
			}
		}
	}
	for _, ct := range []string{"text/html", "application/octet-stream", "image/svg+xml", "image/jpeg; charset=utf-8", ""} {
		im := &Image{Data: []byte("<script>x</script>"), ContentType: []string{ct}, ETag: `"01"`}
		w := httptest.NewRecorder()
		code, written := Serve(w, httptest.NewRequest(http.MethodGet, "/p/x/t", nil), im)
		if code != http.StatusBadGateway || written != 0 || w.Header().Get("Content-Type") != "application/json" ||
			w.Header().Get(ErrorHeader) != ErrorCorrupt || bytes.Contains(w.Body.Bytes(), []byte("script")) {
			t.Errorf("Content-Type %q: HTTP %d, %d bytes, header %v, body %q", ct, code, written, w.Header(), w.Body)
		}
	}
}

func TestAcceptsWebP(t *testing.T) {
	cases := map[string]bool{
		"": false,
		"image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8": true, // Chrome
		"image/webp,*/*":                        true,
		"IMAGE/WEBP":                            true,
		" image/webp ; q=0.5":                   true,
		"image/webp;q=0":                        false,
		"image/webp; q=0.000":                   false,
		"image/webp;q=0.001":                    true,
		"image/webp;q=1":                        true,
		"image/webp;level=1":                    true,
		"image/*,*/*;q=0.8":                     false, // accepts anything, but not WebP by name
		"*/*":                                   false,
		"image/jpeg":                            false,
		"image/webpx":                           false,
		"text/html, image/webp;q=0., image/png": false,
	}
	for accept, want := range cases {
		h := http.Header{}
		if accept != "" {
			h.Set("Accept", accept)
		}
		if got := AcceptsWebP(h); got != want {
			t.Errorf("AcceptsWebP(%q) = %v, want %v", accept, got, want)
		}
	}
	// Several Accept lines count together.
	if !AcceptsWebP(http.Header{"Accept": {"image/png", "image/webp"}}) {
		t.Error("a second Accept line was not read")
	}
}

func TestChoose(t *testing.T) {
	webp := http.Header{"Accept": {"image/webp,image/*"}}
	plain := http.Header{"Accept": {"image/*"}}
	cases := []struct {
		name     string
		h        http.Header
		size     needle.SizeCode
		ext      string
		want     Choice
		wantVary string
	}{
		{"bare, WebP accepted", webp, needle.SizeSmall, "", Choice{needle.SizeSmallWebP, needle.SizeSmall, true}, "Accept"},
		{"bare, WebP not accepted", plain, needle.SizeSmall, "", Choice{needle.SizeSmall, needle.SizeSmall, true}, "Accept"},
		{"jpg, WebP accepted", webp, needle.SizeMedium, "jpg", Choice{needle.SizeMedium, needle.SizeMedium, false}, ""},
		{"png", plain, needle.SizeLarge, "png", Choice{needle.SizeLarge, needle.SizeLarge, false}, ""},
		{"webp, not accepted", plain, needle.SizeThumbWebP, "webp", Choice{needle.SizeThumbWebP, needle.SizeThumbWebP, false}, ""},
		{"bare original", webp, needle.SizeOriginal, "", Choice{needle.SizeOriginal, needle.SizeOriginal, false}, ""},
	}
	for _, c := range cases {
		got := Choose(c.h, c.size, c.ext)
		if got != c.want {
			t.Errorf("%s: Choose = %+v, want %+v", c.name, got, c.want)
		}
		rec := httptest.NewRecorder()
		got.SetVary(rec)
		if v := rec.Header().Get("Vary"); v != c.wantVary {
			t.Errorf("%s: Vary %q, want %q", c.name, v, c.wantVary)
		}
	}
}
