//go:build linux

package store

import (
	"bytes"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/haybale/haybale/internal/imagetest"
	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// TestLoopCorpusAnswersAsNetHTTP stores every photo of the corpus
// (HAYBALE_PHOTOS) under each size, and wants the same answers, byte for
// byte but the Date, from the event loops and from net/http: GET and HEAD,
// with an extension and bare, whole and as a large image sent with
// sendfile.
func TestLoopCorpusAnswersAsNetHTTP(t *testing.T) {
	dir := os.Getenv("HAYBALE_PHOTOS")
	if dir == "" {
		t.Skip("HAYBALE_PHOTOS is not set; set it to the photo corpus folder (CI: ../shared/photos) to run this")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]needle.ContentType{".jpg": needle.TypeJPEG, ".jpeg": needle.TypeJPEG, ".png": needle.TypePNG, ".webp": needle.TypeWebP, ".gif": needle.TypeGIF}
	ts := startServer(t, Options{Dir: t.TempDir(), FS: vfs.Default}, ServerOptions{EventLoop: true})
	ts.allocate(t, 1)
	if !ts.srv.srv.EventLoop() {
		t.Fatal("not served on event loops")
	}
	var photos []*photo
	r := rand.New(rand.NewPCG(9, 9))
	for i, e := range entries {
		ct, ok := types[strings.ToLower(filepath.Ext(e.Name()))]
		if !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		p := &photo{id: needle.PhotoID{Vid: 1, Key: uint64(1000 + i), Cookie: r.Uint64()}, ctype: ct}
		for s := range p.data {
			// Every size: the photo cut to a quarter, a half, three
			// quarters and whole, so that sizes both sides of the
			// sendfile and mapping thresholds are served.
			p.data[s] = b[:len(b)*(s+1)/4]
		}
		ts.writePhoto(t, p)
		photos = append(photos, p)
	}
	if len(photos) == 0 {
		t.Fatalf("no photo in %s", dir)
	}
	ref := &http.Server{Handler: ts.srv.handler}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ref.Serve(ln)
	defer ref.Close()
	for _, p := range photos {
		for _, s := range needle.PhotoSizes {
			for _, target := range []string{p.path(s), needle.ImagePath(p.id, s, "jpg")} {
				for _, method := range []string{http.MethodGet, http.MethodHead} {
					got, gotBody := imagetest.RawAnswer(t, ts.srv.HTTPAddr().String(), method, target, nil)
					want, wantBody := imagetest.RawAnswer(t, ln.Addr().String(), method, target, nil)
					got.Header.Del("Date")
					want.Header.Del("Date")
					if got.StatusCode != want.StatusCode || !reflect.DeepEqual(got.Header, want.Header) || !bytes.Equal(gotBody, wantBody) {
						t.Errorf("%s %s:\n loop     %d %v %d bytes\n net/http %d %v %d bytes", method, target,
							got.StatusCode, got.Header, len(gotBody), want.StatusCode, want.Header, len(wantBody))
					}
					if method == http.MethodGet && got.StatusCode == http.StatusOK && !bytes.Equal(gotBody, p.data[s]) {
						t.Errorf("%s %s: not the stored bytes", method, target)
					}
				}
			}
		}
	}
}

// TestLoopColdReadsOnce reads needles not in the page cache through the
// event loops: each is read once, without the loop waiting for the disk
// (the loop makes the read through its io_uring, or a goroutine makes it
// where the system has none), with O_DIRECT the first time, buffered when
// read again within the window, as on the fasthttp path, and answered
// whole.
func TestLoopColdReadsOnce(t *testing.T) {
	ts, photos, v, drop := directStore(t, ServerOptions{EventLoop: true}, 6, 3)
	coldGetRounds(t, ts, photos, v, drop, nil)
}

// coldGetRounds GETs every size of every photo of a directStore in two
// rounds, each image from a cold page cache, checks the answers, and that
// every image was read with one pread: direct in the first round,
// buffered in the second (read again within the policy's window). With
// round set, it calls round as each round starts, and what that returns
// as the round ends, with the round's number and the GETs it made.
func coldGetRounds(t *testing.T, ts *testServer, photos []*photo, v *volume.Volume, drop func(), round func() (end func(round int, n int64))) {
	t.Helper()
	for r, want := range []string{"direct", "buffered"} {
		st0 := v.Status()
		var end func(int, int64)
		if round != nil {
			end = round()
		}
		for _, p := range photos {
			for i, size := range needle.PhotoSizes {
				drop()
				resp, body := ts.do(t, http.MethodGet, needle.ImagePath(p.id, size, "jpg"), nil)
				if resp.StatusCode != http.StatusOK || !bytes.Equal(body, p.data[i]) {
					t.Fatalf("round %d: %v: %d, %d bytes", r, size, resp.StatusCode, len(body))
				}
			}
		}
		st := v.Status()
		n := int64(len(photos) * len(needle.PhotoSizes))
		direct, buffered := st.DirectReads-st0.DirectReads, st.ColdBufferedReads-st0.ColdBufferedReads
		if st.Preads-st0.Preads != n || (want == "direct" && direct != n) || (want == "buffered" && buffered != n) {
			t.Fatalf("round %d: %d preads, %d direct, %d buffered for %d cold GETs, want all %s", r, st.Preads-st0.Preads, direct, buffered, n, want)
		}
		if end != nil {
			end(r, n)
		}
	}
}

// TestLoopMetricsCounted wants the image answers of the event loops
// counted by status, timed, and their bytes counted, as on the other
// paths.
func TestLoopMetricsCounted(t *testing.T) {
	f := newHTTPFixtureWith(t, vfs.Default, t.TempDir(), 128, true)
	count := func(name string) float64 { return scrapeCounter(t, f.ts.base, name) }
	ok0, nf0 := count(`haybale_store_http_requests_total{code="200"}`), count(`haybale_store_http_requests_total{code="404"}`)
	lat0 := count("haybale_store_http_request_duration_seconds_count")
	served0, sent0 := count("haybale_store_http_bytes_served_total"), count("haybale_store_http_bytes_sendfile_total")
	for _, s := range needle.PhotoSizes {
		f.ts.do(t, http.MethodGet, needle.ImagePath(f.jpeg.id, s, "jpg"), nil)
	}
	f.ts.do(t, http.MethodGet, needle.ImagePath(needle.PhotoID{Vid: 1, Key: 99, Cookie: 1}, 0, "jpg"), nil)
	if d := count(`haybale_store_http_requests_total{code="200"}`) - ok0; d != 4 {
		t.Errorf("%v answers 200 counted, want 4", d)
	}
	if d := count(`haybale_store_http_requests_total{code="404"}`) - nf0; d != 1 {
		t.Errorf("%v answers 404 counted, want 1", d)
	}
	if d := count("haybale_store_http_request_duration_seconds_count") - lat0; d != 5 {
		t.Errorf("%v answers timed, want 5", d)
	}
	var total, large float64
	for i := range needle.PhotoSizes {
		total += float64(len(f.jpeg.data[i]))
		if len(f.jpeg.data[i]) >= sendfileMin {
			large += float64(len(f.jpeg.data[i]))
		}
	}
	if d := count("haybale_store_http_bytes_served_total") - served0; d != total {
		t.Errorf("%v bytes served counted, want %v", d, total)
	}
	if d := count("haybale_store_http_bytes_sendfile_total") - sent0; d != large || large == 0 {
		t.Errorf("%v bytes sent with sendfile counted, want %v", d, large)
	}
}
