package store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/internal/vfs/errorfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// httpFixture is a server holding volume 1 with a JPEG photo, a PNG
// photo, a deleted photo and a photo whose medium size is corrupt on disk.
type httpFixture struct {
	ts                          *testServer
	jpeg, png, deleted, corrupt *photo
	// webp has the four sizes and their WebP variants (fakeWebP).
	webp           *photo
	corruptReports atomic.Int64
}

func newHTTPFixture(t *testing.T) *httpFixture {
	t.Helper()
	return newHTTPFixtureOn(t, vfs.NewMem(), "/data", 1)
}

// newHTTPFixtureOn is newHTTPFixture with the store's volumes in dir on
// fs, and images scale times larger.
func newHTTPFixtureOn(t *testing.T, fs vfs.FS, dir string, scale int) *httpFixture {
	t.Helper()
	return newHTTPFixtureWith(t, fs, dir, scale, false)
}

// newHTTPFixtureWith is newHTTPFixtureOn with the HTTP connections served
// on event loops when eventLoop is set.
func newHTTPFixtureWith(t *testing.T, fs vfs.FS, dir string, scale int, eventLoop bool) *httpFixture {
	t.Helper()
	f := &httpFixture{}
	f.ts = startServer(t, Options{Dir: dir, FS: fs}, ServerOptions{
		EventLoop: eventLoop,
		OnCorrupt: func(vid uint32, key uint64, size needle.SizeCode, err error) {
			if vid == 1 && key == f.corrupt.id.Key && size == needle.SizeMedium && volume.IsCorruption(err) {
				f.corruptReports.Add(1)
			}
		},
	})
	f.ts.allocate(t, 1)
	r := rand.New(rand.NewPCG(5, 6))
	f.jpeg = randomPhoto(r, 1, 0x1f4a9, 300*scale)
	f.png = randomPhoto(r, 1, 0x1f4aa, 200*scale)
	f.png.ctype = needle.TypePNG
	f.deleted = randomPhoto(r, 1, 0x1f4ab, 100*scale)
	f.corrupt = randomPhoto(r, 1, 0x1f4ac, 100*scale)
	for _, p := range []*photo{f.jpeg, f.png, f.deleted, f.corrupt} {
		f.ts.writePhoto(t, p)
	}
	f.webp = randomPhoto(r, 1, 0x1f4ad, 150*scale)
	req := &storepb.WriteRequest{Vid: 1}
	for i, d := range f.webp.data {
		req.Needles = append(req.Needles, &storepb.Needle{
			Key: f.webp.id.Key, Cookie: f.webp.id.Cookie, SizeCode: uint32(i), ContentType: uint32(needle.TypeJPEG), Data: d,
		})
	}
	for i, size := range needle.WebPSizes {
		req.Needles = append(req.Needles, &storepb.Needle{
			Key: f.webp.id.Key, Cookie: f.webp.id.Cookie, SizeCode: uint32(size), ContentType: uint32(needle.TypeWebP), Data: fakeWebP(byte(i), (120*scale)<<i),
		})
	}
	if _, err := f.ts.client.Write(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ts.srv.Store().mustVolume(t, 1).Delete(context.Background(), f.deleted.id.Key, f.deleted.id.Cookie, needle.SizeAll); err != nil {
		t.Fatal(err)
	}
	// Flip one data byte of the corrupt photo's medium size, on disk.
	dat, err := fs.OpenReadWrite(volume.DatPath(dir, 1))
	if err != nil {
		t.Fatal(err)
	}
	at := f.corrupt.offs[needle.SizeMedium] + needle.HeaderSize + 7
	b := []byte{f.corrupt.data[needle.SizeMedium][7] ^ 0xff}
	if _, err := dat.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
	dat.Close()
	return f
}

func (s *Store) mustVolume(t testing.TB, vid uint32) *volume.Volume {
	t.Helper()
	v, err := s.Volume(vid)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func etagOf(sum uint64) string { return fmt.Sprintf(`"%016x"`, sum) }

// wantJSONError checks that a body is a JSON object with an "error" string.
func wantJSONError(t *testing.T, resp *http.Response, body []byte) {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error answer Content-Type %q, want application/json", ct)
	}
	var v struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &v); err != nil || v.Error == "" {
		t.Errorf("error answer body %q is not {\"error\": ...}: %v", body, err)
	}
}

func TestHTTPCases(t *testing.T) {
	t.Run("fasthttp", func(t *testing.T) { testHTTPCases(t, newHTTPFixture(t)) })
	t.Run("loop", func(t *testing.T) { testHTTPCases(t, newHTTPFixtureWith(t, vfs.NewMem(), "/data", 1, true)) })
}

func testHTTPCases(t *testing.T, f *httpFixture) {
	ts := f.ts
	jpegT := f.jpeg.data[needle.SizeThumb]
	jpegL := f.jpeg.data[needle.SizeLarge]
	n := len(jpegT)
	etag := etagOf(f.jpeg.sums[needle.SizeThumb])

	// Last-Modified of the thumbnail, as served.
	resp, _ := ts.do(t, http.MethodGet, f.jpeg.path(needle.SizeThumb), nil)
	lastMod := resp.Header.Get("Last-Modified")
	lm, err := http.ParseTime(lastMod)
	if err != nil {
		t.Fatalf("Last-Modified %q: %v", lastMod, err)
	}
	if d := time.Since(lm); d < -time.Second || d > time.Minute {
		t.Fatalf("Last-Modified %v is not the append time", lm)
	}
	before := lm.Add(-time.Hour).Format(http.TimeFormat)
	after := lm.Add(time.Hour).Format(http.TimeFormat)
	wrongCookie := needle.PhotoID{Vid: 1, Key: f.jpeg.id.Key, Cookie: f.jpeg.id.Cookie ^ 1}
	unknownKey := needle.PhotoID{Vid: 1, Key: 0xabcdef, Cookie: f.jpeg.id.Cookie}

	type tc struct {
		name      string
		method    string
		path      string
		hdr       map[string]string
		code      int
		wantHdr   map[string]string // "" means must be absent
		body      []byte            // nil: not checked
		errorBody bool
	}
	full := map[string]string{
		"Content-Type":   "image/jpeg",
		"Content-Length": strconv.Itoa(n),
		"Etag":           etag,
		"Last-Modified":  lastMod,
		"Cache-Control":  "public, max-age=31536000, immutable",
		"Accept-Ranges":  "bytes",
	}
	notFound := map[string]string{"Cache-Control": "public, max-age=60", "Etag": "", ErrorHeader: ""}
	cases := []tc{
		{name: "GET thumbnail", path: f.jpeg.path(needle.SizeThumb), code: 200, wantHdr: full, body: jpegT},
		{name: "GET large with extension", path: needle.ImagePath(f.jpeg.id, needle.SizeLarge, "jpg"), code: 200, body: jpegL,
			wantHdr: map[string]string{"Content-Length": strconv.Itoa(len(jpegL)), "Etag": etagOf(f.jpeg.sums[needle.SizeLarge])}},
		{name: "extension is cosmetic", path: needle.ImagePath(f.png.id, needle.SizeSmall, "jpg"), code: 200, body: f.png.data[needle.SizeSmall],
			wantHdr: map[string]string{"Content-Type": "image/png"}},
		{name: "HEAD", method: http.MethodHead, path: f.jpeg.path(needle.SizeThumb), code: 200, wantHdr: full, body: []byte{}},
		{name: "If-None-Match match", path: f.jpeg.path(0), hdr: map[string]string{"If-None-Match": etag}, code: 304,
			wantHdr: map[string]string{"Etag": etag, "Cache-Control": "public, max-age=31536000, immutable", "Content-Type": ""}, body: []byte{}},
		{name: "If-None-Match weak in list", path: f.jpeg.path(0), hdr: map[string]string{"If-None-Match": `"x", W/` + etag}, code: 304},
		{name: "If-None-Match star", path: f.jpeg.path(0), hdr: map[string]string{"If-None-Match": "*"}, code: 304},
		{name: "If-None-Match other", path: f.jpeg.path(0), hdr: map[string]string{"If-None-Match": `"0000000000000000"`}, code: 200, body: jpegT},
		{name: "If-None-Match garbage", path: f.jpeg.path(0), hdr: map[string]string{"If-None-Match": `"unterminated, ,,W/`}, code: 200, body: jpegT},
		{name: "If-Modified-Since same", path: f.jpeg.path(0), hdr: map[string]string{"If-Modified-Since": lastMod}, code: 304},
		{name: "If-Modified-Since later", path: f.jpeg.path(0), hdr: map[string]string{"If-Modified-Since": after}, code: 304},
		{name: "If-Modified-Since earlier", path: f.jpeg.path(0), hdr: map[string]string{"If-Modified-Since": before}, code: 200, body: jpegT},
		{name: "If-Modified-Since malformed", path: f.jpeg.path(0), hdr: map[string]string{"If-Modified-Since": "yesterday"}, code: 200},
		{name: "If-None-Match wins over If-Modified-Since", path: f.jpeg.path(0),
			hdr: map[string]string{"If-None-Match": `"0"`, "If-Modified-Since": after}, code: 200},
		{name: "If-Match mismatch", path: f.jpeg.path(0), hdr: map[string]string{"If-Match": `"0"`}, code: 412, errorBody: true},
		{name: "If-Match match", path: f.jpeg.path(0), hdr: map[string]string{"If-Match": etag}, code: 200, body: jpegT},
		{name: "If-Unmodified-Since earlier", path: f.jpeg.path(0), hdr: map[string]string{"If-Unmodified-Since": before}, code: 412, errorBody: true},
		{name: "Range first bytes", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=0-9"}, code: 206, body: jpegT[:10],
			wantHdr: map[string]string{"Content-Range": fmt.Sprintf("bytes 0-9/%d", n), "Content-Length": "10", "Etag": etag, "Content-Type": "image/jpeg"}},
		{name: "Range suffix", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=-5"}, code: 206, body: jpegT[n-5:],
			wantHdr: map[string]string{"Content-Range": fmt.Sprintf("bytes %d-%d/%d", n-5, n-1, n)}},
		{name: "Range suffix longer than body", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=-999999999999999999999"}, code: 206, body: jpegT},
		{name: "Range open end", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=10-"}, code: 206, body: jpegT[10:]},
		{name: "Range end past body", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=5-99999999999999999999999"}, code: 206, body: jpegT[5:]},
		{name: "Range HEAD", method: http.MethodHead, path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=0-9"}, code: 206,
			wantHdr: map[string]string{"Content-Length": "10"}, body: []byte{}},
		{name: "Range start past body", path: f.jpeg.path(0), hdr: map[string]string{"Range": fmt.Sprintf("bytes=%d-", n)}, code: 416, errorBody: true,
			wantHdr: map[string]string{"Content-Range": fmt.Sprintf("bytes */%d", n)}},
		{name: "Range huge start", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=99999999999999999999999999-"}, code: 416, errorBody: true},
		{name: "Range malformed", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=abc"}, code: 416, errorBody: true},
		{name: "Range reversed", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=9-3"}, code: 416, errorBody: true},
		{name: "Range empty suffix", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=-0"}, code: 416, errorBody: true},
		{name: "Range several", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=0-1,4-5"}, code: 200, body: jpegT},
		{name: "Range many", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=" + strings.Repeat("0-1,", 5000) + "0-1"}, code: 431, errorBody: true},
		{name: "Range other unit", path: f.jpeg.path(0), hdr: map[string]string{"Range": "items=0-1"}, code: 200, body: jpegT},
		{name: "If-Range match", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=0-1", "If-Range": etag}, code: 206, body: jpegT[:2]},
		{name: "If-Range date match", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=0-1", "If-Range": lastMod}, code: 206, body: jpegT[:2]},
		{name: "If-Range mismatch", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=0-1", "If-Range": `"0"`}, code: 200, body: jpegT},
		{name: "wrong cookie", path: needle.ImagePath(wrongCookie, 0, ""), code: 404, wantHdr: notFound, errorBody: true},
		{name: "unknown key", path: needle.ImagePath(unknownKey, 0, ""), code: 404, wantHdr: notFound, errorBody: true},
		{name: "deleted", path: f.deleted.path(needle.SizeSmall), code: 404, wantHdr: notFound, errorBody: true},
		{name: "HEAD deleted", method: http.MethodHead, path: f.deleted.path(needle.SizeSmall), code: 404, wantHdr: notFound},
		{name: "original never written", path: f.jpeg.path(needle.SizeOriginal), code: 404, wantHdr: notFound, errorBody: true},
		{name: "volume not here", path: "/p/42-1-0000000000000001/t", code: 404, errorBody: true,
			wantHdr: map[string]string{ErrorHeader: "volume-not-here", "Cache-Control": "no-store"}},
		{name: "corrupt", path: f.corrupt.path(needle.SizeMedium), code: 500, errorBody: true,
			wantHdr: map[string]string{ErrorHeader: "corrupt", "Cache-Control": "no-store", "Etag": ""}},
		{name: "intact size of the corrupt photo", path: f.corrupt.path(needle.SizeSmall), code: 200, body: f.corrupt.data[needle.SizeSmall]},
		{name: "malformed ID", path: "/p/zzz/t", code: 400, errorBody: true},
		{name: "malformed size", path: "/p/1-1f4a9-0000000000000001/x", code: 400, errorBody: true},
		{name: "upper-case key", path: "/p/1-1F4A9-0000000000000001/t", code: 400, errorBody: true},
		{name: "short cookie", path: "/p/1-1f4a9-01/t", code: 400, errorBody: true},
		{name: "no size", path: "/p/1-1f4a9-0000000000000001", code: 400, errorBody: true},
		{name: "empty", path: "/p/", code: 400, errorBody: true},
		{name: "bad extension", path: "/p/1-1f4a9-0000000000000001/t.j-pg", code: 400, errorBody: true},
		{name: "vid overflow", path: "/p/99999999999-1-0000000000000001/t", code: 400, errorBody: true},
		{name: "long path", path: "/p/" + strings.Repeat("1", 20000) + "/t", code: 431, errorBody: true},
		{name: "Range many, under the header limit", path: f.jpeg.path(0), hdr: map[string]string{"Range": "bytes=" + strings.Repeat("0-1,", 2000) + "0-1"}, code: 200, body: jpegT},
		{name: "long path, under the header limit", path: "/p/" + strings.Repeat("1", 8000) + "/t", code: 400, errorBody: true},
		{name: "POST", method: http.MethodPost, path: f.jpeg.path(0), code: 405, errorBody: true, wantHdr: map[string]string{"Allow": "GET, HEAD"}},
		{name: "DELETE", method: http.MethodDelete, path: f.jpeg.path(0), code: 405, errorBody: true},
		{name: "unknown path", path: "/nope", code: 404, errorBody: true},
		{name: "healthz", path: "/healthz", code: 200},
		{name: "readyz", path: "/readyz", code: 200},
		{name: "metrics", path: "/metrics", code: 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := c.method
			if method == "" {
				method = http.MethodGet
			}
			resp, body := ts.do(t, method, c.path, c.hdr)
			if resp.StatusCode != c.code {
				t.Fatalf("status %d, want %d (body %.200q)", resp.StatusCode, c.code, body)
			}
			for k, want := range c.wantHdr {
				if got := resp.Header.Get(k); got != want {
					t.Errorf("%s: %q, want %q", k, got, want)
				}
			}
			if c.body != nil && !bytes.Equal(body, c.body) {
				t.Errorf("body: %d bytes, want %d", len(body), len(c.body))
			}
			if c.errorBody {
				wantJSONError(t, resp, body)
			}
			if c.code == 500 && bytes.Contains(body, f.corrupt.data[needle.SizeMedium][:16]) {
				t.Error("corrupt answer carries the image bytes")
			}
		})
	}

	// The three kinds of missing image answer identically.
	var first string
	for _, p := range []string{needle.ImagePath(wrongCookie, 0, ""), needle.ImagePath(unknownKey, 0, ""), f.deleted.path(0)} {
		resp, body := ts.do(t, http.MethodGet, p, nil)
		resp.Header.Del("Date")
		got := fmt.Sprint(resp.StatusCode, resp.Header, string(body))
		if first == "" {
			first = got
		} else if got != first {
			t.Errorf("404 answers differ:\n%s\n%s", first, got)
		}
	}

	if got := f.corruptReports.Load(); got != 1 {
		t.Errorf("OnCorrupt called %d times for one corrupt read, want 1", got)
	}
	_, metrics := ts.do(t, http.MethodGet, "/metrics", nil)
	for _, want := range []string{
		`haybale_store_http_requests_total{code="200"}`,
		`haybale_store_http_requests_total{code="304"}`,
		`haybale_store_http_requests_total{code="416"}`,
		"haybale_store_corrupt_reads_total 1",
		"haybale_store_http_request_duration_seconds_bucket",
		"haybale_store_http_bytes_served_total",
		`haybale_store_volumes{state="writable"} 1`,
		"haybale_store_images 20", // 3 photos of 4 sizes, one of 4 sizes and 4 WebP variants
		"haybale_store_reads_total{kind=",
		"haybale_store_image_bytes",
		`haybale_store_grpc_requests_total{code="OK",method="/haybale.v1.Store/Write"} 5`,
	} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestConditionalAndRangeMatchServeContent checks the hand-written
// precondition and range handling against net/http's ServeContent over the
// same bytes, time and ETag, for status, Content-Range and body.
func TestConditionalAndRangeMatchServeContent(t *testing.T) {
	f := newHTTPFixture(t)
	p := f.jpeg.path(needle.SizeSmall)
	data := f.jpeg.data[needle.SizeSmall]
	resp, _ := f.ts.do(t, http.MethodGet, p, nil)
	etag, lastMod := resp.Header.Get("Etag"), resp.Header.Get("Last-Modified")
	modTime, _ := http.ParseTime(lastMod)

	ref := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Etag", etag)
		w.Header().Set("Content-Type", "image/jpeg")
		http.ServeContent(w, r, "", modTime, bytes.NewReader(data))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ref.Serve(ln)
	defer ref.Close()
	refBase := "http://" + ln.Addr().String()

	n := len(data)
	headers := []map[string]string{
		nil,
		{"If-None-Match": etag}, {"If-None-Match": `"a", ` + etag}, {"If-None-Match": "W/" + etag}, {"If-None-Match": `"b"`},
		{"If-None-Match": "*"},
		{"If-Modified-Since": lastMod}, {"If-Modified-Since": modTime.Add(-time.Second).Format(http.TimeFormat)},
		{"If-Match": etag}, {"If-Match": `"zz"`}, {"If-Match": "W/" + etag},
		{"If-Unmodified-Since": modTime.Add(-time.Second).Format(http.TimeFormat)}, {"If-Unmodified-Since": lastMod},
		{"Range": "bytes=0-0"}, {"Range": "bytes=3-17"}, {"Range": "bytes=-1"}, {"Range": fmt.Sprintf("bytes=%d-", n-1)},
		{"Range": fmt.Sprintf("bytes=%d-", n)}, {"Range": fmt.Sprintf("bytes=0-%d", n*2)}, {"Range": "bytes=5-2"},
		{"Range": "bytes=x-"}, {"Range": "bytes=-"}, {"Range": "bytes= 2-4"},
		{"Range": "bytes=0-3", "If-Range": etag}, {"Range": "bytes=0-3", "If-Range": `"q"`},
		{"Range": "bytes=0-3", "If-Range": lastMod}, {"Range": "bytes=0-3", "If-Range": "W/" + etag},
		{"Range": "bytes=0-3", "If-None-Match": etag}, {"Range": "bytes=0-3", "If-Match": `"q"`},
	}
	client := &http.Client{}
	for _, h := range headers {
		get := func(base string) (*http.Response, []byte) {
			req, _ := http.NewRequest(http.MethodGet, base+p, nil)
			for k, v := range h {
				req.Header.Set(k, v)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp, body
		}
		got, gotBody := get(f.ts.base)
		want, wantBody := get(refBase)
		if got.StatusCode != want.StatusCode || got.Header.Get("Content-Range") != want.Header.Get("Content-Range") {
			t.Errorf("%v: status %d %q, ServeContent %d %q", h, got.StatusCode, got.Header.Get("Content-Range"),
				want.StatusCode, want.Header.Get("Content-Range"))
			continue
		}
		if want.StatusCode < 300 && !bytes.Equal(gotBody, wantBody) {
			t.Errorf("%v: bodies differ", h)
		}
	}
}

// TestOnePreadPerGET counts the file reads behind each request.
func TestOnePreadPerGET(t *testing.T) {
	t.Run("fasthttp", func(t *testing.T) { testOnePreadPerGET(t, false) })
	t.Run("loop", func(t *testing.T) { testOnePreadPerGET(t, true) })
}

func testOnePreadPerGET(t *testing.T, loop bool) {
	counter := &errorfs.Counter{}
	fs := errorfs.Wrap(vfs.NewMem(), counter)
	ts := startServer(t, Options{Dir: "/data", FS: fs}, ServerOptions{EventLoop: loop})
	ts.allocate(t, 1)
	r := rand.New(rand.NewPCG(7, 8))
	p := randomPhoto(r, 1, 1, 50<<10) // sizes up to 400 KiB
	ts.writePhoto(t, p)

	type req struct {
		method, path string
		hdr          map[string]string
		reads        int64
	}
	reqs := []req{
		{http.MethodGet, p.path(0), nil, 1},
		{http.MethodGet, p.path(1), nil, 1},
		{http.MethodGet, p.path(2), nil, 1},
		{http.MethodGet, p.path(3), nil, 1},
		{http.MethodGet, p.path(3), nil, 1}, // pooled buffer now large enough
		{http.MethodHead, p.path(3), nil, 1},
		{http.MethodGet, p.path(3), map[string]string{"Range": "bytes=100-200"}, 1},
		{http.MethodGet, p.path(3), map[string]string{"If-None-Match": etagOf(p.sums[3])}, 1},
		{http.MethodGet, needle.ImagePath(needle.PhotoID{Vid: 1, Key: 99, Cookie: 1}, 0, ""), nil, 0}, // not in the index
		{http.MethodGet, "/p/bad/t", nil, 0},
	}
	for _, q := range reqs {
		counter.Reset()
		resp, _ := ts.do(t, q.method, q.path, q.hdr)
		if got := counter.Count(errorfs.OpRead); got != q.reads {
			t.Errorf("%s %s %v: %d preads (status %d), want %d", q.method, q.path, q.hdr, got, resp.StatusCode, q.reads)
		}
	}
}

// TestConcurrentWritersAndReaders runs writers over gRPC and readers over
// HTTP at once; readers check every acknowledged photo reads back intact.
func TestConcurrentWritersAndReaders(t *testing.T) {
	ts := startServer(t, Options{Dir: t.TempDir()}, ServerOptions{MaxConns: 16})
	ts.allocate(t, 1)
	ts.allocate(t, 2)
	const writers, perWriter, readers = 4, 15, 4
	acked := make(chan *photo, writers*perWriter)
	var wg sync.WaitGroup
	var nextKey atomic.Uint64
	for w := range writers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for range perWriter {
				p := randomPhoto(r, uint32(1+w%2), nextKey.Add(1), 500+r.IntN(2000))
				if err := ts.tryWritePhoto(p); err != nil {
					t.Error(err)
					return
				}
				acked <- p
			}
		})
	}
	var mu sync.Mutex
	var seen []*photo
	var reads atomic.Int64
	done := make(chan struct{})
	var rg sync.WaitGroup
	for i := range readers {
		rg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(i), 10))
			for {
				select {
				case p := <-acked:
					mu.Lock()
					seen = append(seen, p)
					mu.Unlock()
				case <-done:
					return
				default:
				}
				mu.Lock()
				if len(seen) == 0 {
					mu.Unlock()
					continue
				}
				p := seen[r.IntN(len(seen))]
				mu.Unlock()
				size := needle.PhotoSizes[r.IntN(4)]
				resp, body := ts.do(t, http.MethodGet, p.path(size), nil)
				if resp.StatusCode != http.StatusOK || !bytes.Equal(body, p.data[size]) {
					t.Errorf("GET %s: %d, %d bytes, want 200 and %d bytes", p.path(size), resp.StatusCode, len(body), len(p.data[size]))
					return
				}
				reads.Add(1)
			}
		})
	}
	wg.Wait()
	for len(acked) > 0 || reads.Load() < 200 {
		time.Sleep(time.Millisecond)
		if t.Failed() {
			break
		}
	}
	close(done)
	rg.Wait()
	for vid := uint32(1); vid <= 2; vid++ {
		if err := ts.srv.Store().mustVolume(t, vid).Check(); err != nil {
			t.Errorf("volume %d: %v", vid, err)
		}
	}
}

// blockingReads is an injector that holds every file read while armed
// until released, signalling each held read on entered.
type blockingReads struct {
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (b *blockingReads) MaybeError(op errorfs.Op) error {
	if op.Kind == errorfs.OpRead && b.armed.Load() {
		b.entered <- struct{}{}
		<-b.release
	}
	return nil
}

// TestShutdownDrains cancels Serve's context (as SIGTERM does) while a GET
// is in flight: the GET completes, new connections are refused, and the
// store is closed after it.
func TestShutdownDrains(t *testing.T) {
	t.Run("fasthttp", func(t *testing.T) { testShutdownDrains(t, false) })
	t.Run("loop", func(t *testing.T) { testShutdownDrains(t, true) })
}

func testShutdownDrains(t *testing.T, loop bool) {
	inj := &blockingReads{entered: make(chan struct{}, 1), release: make(chan struct{})}
	ts := startServer(t, Options{Dir: "/data", FS: errorfs.Wrap(vfs.NewMem(), inj)}, ServerOptions{EventLoop: loop})
	ts.allocate(t, 1)
	p := randomPhoto(rand.New(rand.NewPCG(1, 1)), 1, 1, 4000)
	ts.writePhoto(t, p)

	inj.armed.Store(true)
	type result struct {
		code int
		body []byte
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := ts.http.Get(ts.base + p.path(needle.SizeLarge))
		if err != nil {
			got <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		got <- result{resp.StatusCode, body, err}
	}()
	<-inj.entered // the GET is inside its pread

	ts.cancel() // SIGTERM
	// Wait until the listener is closed: new connections are refused.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", ts.srv.HTTPAddr().String(), time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepting after shutdown began")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-ts.done:
		t.Fatalf("Serve returned (%v) with a request in flight", err)
	default:
	}
	inj.armed.Store(false)
	close(inj.release)

	r := <-got
	if r.err != nil || r.code != http.StatusOK || !bytes.Equal(r.body, p.data[needle.SizeLarge]) {
		t.Fatalf("in-flight GET: %d, %d bytes, %v", r.code, len(r.body), r.err)
	}
	if err := <-ts.done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	ts.done <- nil // for the cleanup's stop
	if _, _, err := ts.srv.Store().mustVolume(t, 1).Read(1, p.id.Cookie, 0, nil); !errors.Is(err, volume.ErrClosed) {
		t.Fatalf("read after shutdown: %v, want the volume closed", err)
	}
}

// TestBadConnections sends garbage to both ports and checks the server
// still answers.
func TestBadConnections(t *testing.T) {
	t.Run("fasthttp", func(t *testing.T) { testBadConnections(t, false) })
	t.Run("loop", func(t *testing.T) { testBadConnections(t, true) })
}

func testBadConnections(t *testing.T, loop bool) {
	ts := startServer(t, Options{Dir: "/d", FS: vfs.NewMem()}, ServerOptions{ReadHeaderTimeout: 300 * time.Millisecond, EventLoop: loop})
	ts.allocate(t, 1)
	garbage := [][]byte{
		[]byte("GARBAGE\r\n\r\n"),
		[]byte("GET /p/1-1-0000000000000001/t HTTP/1.1\r\nHost: x\r\nRange: " + strings.Repeat("bytes=1-2,", 10000) + "\r\n\r\n"),
		[]byte("GET /p/1-1-0000000000000001/t HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("a", 100<<10) + "\r\n\r\n"),
		bytes.Repeat([]byte{0, 0xff, 0x13}, 5000),
		[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x00\x00\x00\x00\x00"),
	}
	for _, addr := range []string{ts.srv.HTTPAddr().String(), ts.srv.GRPCAddr().String()} {
		for _, g := range garbage {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(g)
			// The server answers or closes; it must not hang. The read
			// deadline above fails the copy if it does.
			var ne net.Error
			if _, err := io.Copy(io.Discard, bufio.NewReader(c)); errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("%s: %.20q: %v", addr, g, err)
			}
			c.Close()
		}
	}
	// A message over the gRPC limit is refused, not buffered.
	_, err := ts.client.Write(context.Background(), &storepb.WriteRequest{Vid: 1, Needles: []*storepb.Needle{{Key: 1, Data: make([]byte, MaxMessageSize+1)}}})
	wantCode(t, "oversized Write", err, codes.ResourceExhausted)
	// Still serving both.
	if resp, _ := ts.do(t, http.MethodGet, "/healthz", nil); resp.StatusCode != 200 {
		t.Fatalf("healthz after garbage: %d", resp.StatusCode)
	}
	ts.writePhoto(t, randomPhoto(rand.New(rand.NewPCG(2, 2)), 1, 1, 10))
}
