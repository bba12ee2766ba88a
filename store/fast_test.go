package store

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/evloop"
	"github.com/haybale/haybale/internal/imagetest"
	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// TestFastPathAnswersAsNetHTTP sends the same requests to the store's
// server (fasthttp, with its fast image path) and to net/http serving the
// store's handler, and wants the same status, headers (but Date) and
// bodies from both: plain GETs and HEADs answered by the fast path, and
// everything it hands to the handler.
//
// It runs over an in-memory file system (every read a pread into a pooled
// buffer) and over the operating system's, with images of up to 300 KB:
// there the volume file is mapped, the needles are in the page cache, and
// the fast path answers from the mapping, the larger images with
// sendfile.
func TestFastPathAnswersAsNetHTTP(t *testing.T) {
	for _, loop := range []bool{false, true} {
		name := ""
		if loop {
			name = "loop-"
		}
		t.Run(name+"mem", func(t *testing.T) {
			f := newHTTPFixtureWith(t, vfs.NewMem(), "/data", 1, loop)
			if got := f.ts.srv.srv.EventLoop(); got != (loop && evloop.Supported) {
				t.Fatalf("served on event loops: %v, want %v", got, loop)
			}
			testFastPathAnswersAsNetHTTP(t, f)
		})
		t.Run(name+"os", func(t *testing.T) { testFastPathAnswersAsNetHTTPOS(t, loop) })
	}
}

// testFastPathAnswersAsNetHTTPOS is the "os" case of
// TestFastPathAnswersAsNetHTTP, on fasthttp or on the event loops.
func testFastPathAnswersAsNetHTTPOS(t *testing.T, loop bool) {
	{
		f := newHTTPFixtureWith(t, vfs.Default, t.TempDir(), 128, loop)
		v := f.ts.srv.Store().mustVolume(t, 1)
		if !v.Status().Mapped {
			t.Fatal("the volume is not mapped")
		}
		testFastPathAnswersAsNetHTTP(t, f)
		st := v.Status()
		if st.MappedReads == 0 {
			t.Errorf("no read was served from the mapping (%d preads)", st.Preads)
		}
		sent := scrapeCounter(t, f.ts.base, "haybale_store_http_bytes_sendfile_total")
		if runtime.GOOS == "linux" && sent == 0 {
			t.Error("no image was sent with sendfile")
		}
		// The same large images were read again and again: from their
		// verified mappings after the first read, and the answers above
		// were still those of net/http.
		hits := scrapeCounter(t, f.ts.base, `haybale_store_verified_mappings_total{kind="hit"}`)
		if ps := f.ts.srv.Store().VerifiedMappings(); runtime.GOOS == "linux" && (hits == 0 || float64(ps.Hits) != hits || ps.Live == 0) {
			t.Errorf("verified mappings: %+v, %.0f hits on the metrics page; want hits", ps, hits)
		}
		t.Logf("%d mapped reads, %d preads, %.0f bytes sent with sendfile, %.0f verified mapping hits", st.MappedReads, st.Preads, sent, hits)
	}
}

func testFastPathAnswersAsNetHTTP(t *testing.T, f *httpFixture) {
	ref := &http.Server{Handler: f.ts.srv.handler}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ref.Serve(ln)
	defer ref.Close()

	etag := etagOf(f.jpeg.sums[needle.SizeSmall])
	small := f.jpeg.path(needle.SizeSmall)
	type request struct {
		method, target string
		hdr            map[string]string
	}
	var reqs []request
	for _, p := range []*photo{f.jpeg, f.png, f.deleted, f.corrupt} {
		for _, s := range needle.PhotoSizes {
			// Bare sizes (chosen by Accept, answered by net/http) and
			// sizes with an extension (answered by the fast path).
			withExt := needle.ImagePath(p.id, s, "jpg")
			reqs = append(reqs, request{http.MethodGet, p.path(s), nil}, request{http.MethodHead, p.path(s), nil},
				request{http.MethodGet, withExt, nil}, request{http.MethodHead, withExt, nil})
		}
	}
	// Bare sizes chosen by Accept, of a photo with WebP variants and of
	// one without (which falls back to the size itself).
	const chrome = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
	for _, p := range []*photo{f.webp, f.jpeg} {
		for _, s := range needle.PhotoSizes {
			for _, accept := range []string{chrome, "image/webp;q=0", "image/jpeg", "IMAGE/WEBP ; q=0.5"} {
				reqs = append(reqs, request{http.MethodGet, p.path(s), map[string]string{"Accept": accept}})
			}
			reqs = append(reqs, request{http.MethodHead, p.path(s), map[string]string{"Accept": chrome}})
		}
	}
	wrongCookie := f.jpeg.id
	wrongCookie.Cookie++
	notHere := f.jpeg.id
	notHere.Vid = 7
	reqs = append(reqs,
		request{http.MethodGet, needle.ImagePath(wrongCookie, needle.SizeThumb, ""), nil},
		request{http.MethodGet, needle.ImagePath(needle.PhotoID{Vid: 1, Key: 99, Cookie: 1}, 0, ""), nil},
		request{http.MethodGet, needle.ImagePath(notHere, needle.SizeThumb, ""), nil},
		request{http.MethodHead, needle.ImagePath(notHere, needle.SizeThumb, ""), nil},
		request{http.MethodGet, needle.ImagePath(wrongCookie, needle.SizeThumb, "jpg"), nil},
		request{http.MethodGet, needle.ImagePath(needle.PhotoID{Vid: 1, Key: 99, Cookie: 1}, 0, "jpg"), nil},
		request{http.MethodGet, needle.ImagePath(notHere, needle.SizeThumb, "jpg"), nil},
		request{http.MethodHead, needle.ImagePath(notHere, needle.SizeThumb, "jpg"), nil},
		request{http.MethodGet, needle.ImagePath(f.jpeg.id, needle.SizeThumb, "jpg"), nil},
		request{http.MethodGet, "/p/bad/t", nil},
		request{http.MethodGet, "/p/", nil},
		request{http.MethodGet, small + "?x=1", nil},
		request{http.MethodGet, "/p/../healthz", nil},
		request{http.MethodGet, "/p//" + small[3:], nil},
		request{http.MethodGet, "/p/" + f.jpeg.id.String() + "%2Fs", nil},
		request{http.MethodPost, small, nil},
		request{http.MethodDelete, small, nil},
		request{http.MethodGet, small, map[string]string{"If-None-Match": etag}},
		request{http.MethodGet, small, map[string]string{"If-None-Match": `"other"`}},
		request{http.MethodGet, small, map[string]string{"If-Match": `"other"`}},
		request{http.MethodGet, small, map[string]string{"Range": "bytes=3-17"}},
		request{http.MethodGet, small, map[string]string{"Range": "bytes=99999999-"}},
		request{http.MethodGet, small, map[string]string{"if-none-match": etag}},
		request{http.MethodGet, "/healthz", nil},
		request{http.MethodGet, "/readyz", nil},
		request{http.MethodGet, "/nope", nil},
	)
	for _, q := range reqs {
		got, gotBody := imagetest.RawAnswer(t, f.ts.srv.HTTPAddr().String(), q.method, q.target, q.hdr)
		want, wantBody := imagetest.RawAnswer(t, ln.Addr().String(), q.method, q.target, q.hdr)
		got.Header.Del("Date")
		want.Header.Del("Date")
		if got.StatusCode != want.StatusCode || !reflect.DeepEqual(got.Header, want.Header) || !bytes.Equal(gotBody, wantBody) {
			t.Errorf("%s %s %v:\n fast     %d %v %q\n net/http %d %v %q", q.method, q.target, q.hdr,
				got.StatusCode, got.Header, clipBody(gotBody), want.StatusCode, want.Header, clipBody(wantBody))
		}
	}
	// Both servers reported each corrupt read.
	if n := f.corruptReports.Load(); n != 8 {
		t.Errorf("%d corrupt reads reported, want 8 (a GET and a HEAD, bare and with an extension, on each server)", n)
	}
}

// scrapeCounter returns the value of an unlabelled counter from a
// server's /metrics.
func scrapeCounter(t *testing.T, base, name string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

func clipBody(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

// TestFastPathSendfileSlowClient sends pipelined requests for a large
// image (sent with sendfile), a thumbnail (written from the mapping) and
// the large image again on one connection whose client reads slowly
// through a small receive buffer, so that the socket fills and sendfile
// has to wait for it: every answer arrives whole, in order, byte for
// byte.
func TestFastPathSendfileSlowClient(t *testing.T) {
	t.Run("fasthttp", func(t *testing.T) { testSendfileSlowClient(t, false) })
	t.Run("loop", func(t *testing.T) { testSendfileSlowClient(t, true) })
}

func testSendfileSlowClient(t *testing.T, loop bool) {
	ts := startServer(t, Options{Dir: t.TempDir(), FS: vfs.Default}, ServerOptions{EventLoop: loop})
	ts.allocate(t, 1)
	p := randomPhoto(rand.New(rand.NewPCG(3, 4)), 1, 0x77, 48<<10) // t: 48 KiB, l: 384 KiB
	ts.writePhoto(t, p)
	before := scrapeCounter(t, ts.base, "haybale_store_http_bytes_sendfile_total")

	c := dialSmallReceive(t, ts.srv.HTTPAddr().String())
	defer c.Close()
	sizes := []needle.SizeCode{needle.SizeLarge, needle.SizeThumb, needle.SizeLarge}
	var b bytes.Buffer
	for _, s := range sizes {
		fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: store\r\n\r\n", needle.ImagePath(p.id, s, "jpg"))
	}
	if _, err := c.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	// Let the server fill the socket before anything is read.
	time.Sleep(100 * time.Millisecond)
	br := bufio.NewReaderSize(c, 1024)
	for i, s := range sizes {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, p.data[s]) {
			t.Fatalf("answer %d (%v): status %d, %d bytes (want %d), equal %v, err %v",
				i, s, resp.StatusCode, len(body), len(p.data[s]), bytes.Equal(body, p.data[s]), err)
		}
	}
	sent := scrapeCounter(t, ts.base, "haybale_store_http_bytes_sendfile_total") - before
	if len(p.data[needle.SizeThumb]) >= sendfileMin || len(p.data[needle.SizeLarge]) < sendfileMin {
		t.Fatalf("the test wants a thumbnail under %d bytes and a large image over", sendfileMin)
	}
	large := float64(len(p.data[needle.SizeLarge]))
	if loop && evloop.Supported {
		// The first large answer leaves with sendfile; the second, parsed
		// while the first was still queued, most likely from the mapping
		// with the answers before it.
		if sent != large && sent != 2*large {
			t.Errorf("%.0f bytes sent with sendfile, want one or both large answers' (%.0f each)", sent, large)
		}
		return
	}
	if runtime.GOOS == "linux" && sent != float64(2*len(p.data[needle.SizeLarge])) {
		t.Errorf("%.0f bytes sent with sendfile, want the two large answers' %d", sent, 2*len(p.data[needle.SizeLarge]))
	}
}

// dialSmallReceive connects to addr with a receive buffer of 4 KiB, so
// that a large answer fills the server's socket while the test reads
// slowly.
func dialSmallReceive(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
