package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/resizer"
)

// fakeWebPOf stands in for the resizer's WebP encoder: RIFF/WEBP bytes
// that name the size and are half as long as the JPEG.
func fakeWebPOf(im *resizer.Image) []byte {
	return append([]byte("RIFF\x00\x00\x00\x00WEBPVP8 "+im.Letter), bytes.Repeat([]byte{'w'}, len(im.Data)/2)...)
}

// pushRecorder is a cache node's internal listener that records pushes.
type pushRecorder struct {
	mu     sync.Mutex
	pushes map[string]pushRecord // by path
	others []string
}

type pushRecord struct {
	ctype, etag, lastMod string
	body                 []byte
}

func (p *pushRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.Method != http.MethodPut {
		p.others = append(p.others, r.Method+" "+r.URL.Path)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	p.pushes[r.URL.Path] = pushRecord{r.Header.Get("Content-Type"), r.Header.Get("ETag"), r.Header.Get("Last-Modified"), body}
	w.WriteHeader(http.StatusNoContent)
}

// TestUploadStoresWebPAndPushes uploads a photo whose outputs have WebP
// encodings: the variants are stored in the photo's batch, listed in
// "webp_urls" of the upload answer and of the photo info, and t, s and
// their variants are pushed to the owning cache node with the headers the
// stores serve.
func TestUploadStoresWebPAndPushes(t *testing.T) {
	rec := &pushRecorder{pushes: map[string]pushRecord{}}
	node := httptest.NewServer(rec)
	t.Cleanup(node.Close)
	var broken atomic.Bool // the encoder returns bytes that are not WebP
	webpOf := func(im *resizer.Image) []byte {
		if broken.Load() {
			return []byte("not a webp at all")
		}
		return fakeWebPOf(im)
	}
	e := startEnv(t, envOptions{stores: 2, replication: 2, gw: Options{
		WebPOf: webpOf, CacheNodes: []string{"cache0.example:8090"}, CacheEvictURLs: []string{node.URL},
	}})
	up := e.mustUpload(t, encodeJPEG(t, photoLike(900, 600, 21), 90), nil)
	id := mustID(t, up.ID)
	if len(up.WebPURLs) != 4 {
		t.Fatalf("webp_urls %v", up.WebPURLs)
	}
	for _, s := range needle.PhotoSizes {
		l := s.Letter()
		jpegURL, webpURL := up.URLs[l], up.WebPURLs[l]
		if !strings.HasSuffix(webpURL, "/"+l+".webp") || strings.TrimSuffix(webpURL, ".webp") != strings.TrimSuffix(jpegURL, ".jpg") {
			t.Errorf("size %s: URL %s, WebP URL %s", l, jpegURL, webpURL)
		}
		w, _ := s.WebP()
		f := e.readStored(t, up.ID, w)
		jpeg := e.readStored(t, up.ID, s)
		if f.ContentType != "image/webp" || !bytes.HasPrefix(f.Data, []byte("RIFF")) || len(f.Data) != up.Sizes[l].WebPBytes ||
			!bytes.Contains(f.Data, []byte("VP8 "+l)) {
			t.Errorf("size %s: stored WebP variant %s of %d bytes, answer says %d", l, f.ContentType, len(f.Data), up.Sizes[l].WebPBytes)
		}
		// The push carried exactly what the stores serve.
		p, pushed := rec.pushes[needle.ImagePath(id, w, "")]
		pj, pushedJPEG := rec.pushes[needle.ImagePath(id, s, "")]
		wantPushed := s == needle.SizeThumb || s == needle.SizeSmall
		if pushed != wantPushed || pushedJPEG != wantPushed {
			t.Errorf("size %s: pushed %v / %v, want %v", l, pushed, pushedJPEG, wantPushed)
			continue
		}
		if wantPushed {
			for _, c := range []struct {
				got  pushRecord
				want *client.Fetched
			}{{p, f}, {pj, jpeg}} {
				if c.got.ctype != c.want.ContentType || c.got.etag != c.want.ETag || c.got.lastMod != c.want.LastModified || !bytes.Equal(c.got.body, c.want.Data) {
					t.Errorf("size %s: pushed %s %s %s, stores serve %s %s %s", l, c.got.ctype, c.got.etag, c.got.lastMod, c.want.ContentType, c.want.ETag, c.want.LastModified)
				}
			}
		}
	}
	if len(rec.pushes) != 4 || len(rec.others) != 0 {
		t.Errorf("cache node got %d pushes and %v", len(rec.pushes), rec.others)
	}
	if m := metricsText(t, e.url); !strings.Contains(m, `haybale_gateway_cache_pushes_total{result="ok"} 4`) {
		t.Error("pushes not counted")
	}

	var info infoResponse
	do(t, http.MethodGet, e.url+"/photos/"+up.ID, nil, nil).decode(t, &info)
	if fmt.Sprint(info.WebPURLs) != fmt.Sprint(up.WebPURLs) || fmt.Sprint(info.URLs) != fmt.Sprint(up.URLs) {
		t.Errorf("photo info %+v, upload answer %v %v", info, up.URLs, up.WebPURLs)
	}
	// The size redirect follows the extension.
	for suffix, want := range map[string]string{"m.webp": up.WebPURLs["m"], "m.jpg": up.URLs["m"], "m": up.URLs["m"]} {
		if a := do(t, http.MethodGet, e.url+"/photos/"+up.ID+"/"+suffix, nil, nil); a.status != http.StatusFound || a.header.Get("Location") != want {
			t.Errorf("%s: HTTP %d Location %q, want %q", suffix, a.status, a.header.Get("Location"), want)
		}
	}

	// A resizer output whose WebP is not a WebP file fails the upload,
	// and nothing is written.
	broken.Store(true)
	before := volumeBytes(e.c)
	if a := e.uploadRaw(t, encodeJPEG(t, photoLike(300, 200, 22), 90), nil); a.status != http.StatusInternalServerError {
		t.Errorf("bad WebP output: HTTP %d %s", a.status, a.body)
	}
	if after := volumeBytes(e.c); after != before {
		t.Errorf("a failed upload wrote %d bytes", after-before)
	}
}

// TestUploadWithoutWebP checks photos stored without variants: no
// "webp_urls" anywhere, and no variant needles.
func TestUploadWithoutWebP(t *testing.T) {
	e := startEnv(t, envOptions{stores: 1, replication: 1, resizer: resizer.Options{NoWebP: true}})
	up := e.mustUpload(t, encodeJPEG(t, photoLike(400, 300, 23), 90), nil)
	if up.WebPURLs != nil || up.Sizes["t"].WebPBytes != 0 {
		t.Errorf("upload answer lists WebP: %v %+v", up.WebPURLs, up.Sizes)
	}
	a := do(t, http.MethodGet, e.url+"/photos/"+up.ID, nil, nil)
	if a.status != http.StatusOK || bytes.Contains(a.body, []byte("webp_urls")) {
		t.Errorf("photo info: HTTP %d %s", a.status, a.body)
	}
	if _, err := e.cl.Read(bg, mustID(t, up.ID), needle.SizeThumbWebP); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("a variant was stored: %v", err)
	}
}

func TestWebPURLs(t *testing.T) {
	urls := map[string]string{
		"t": "http://cdn.example/p/1-2-0000000000000003/t.jpg",
		"s": "http://cache:8100/p/1-2-0000000000000003/s",
		"m": "http://h.example.com/a.b/p/1-2-0000000000000003/m.png",
	}
	got := webpURLs(urls, needle.PhotoSizes[:])
	want := map[string]string{
		"t": "http://cdn.example/p/1-2-0000000000000003/t.webp",
		"s": "http://cache:8100/p/1-2-0000000000000003/s.webp",
		"m": "http://h.example.com/a.b/p/1-2-0000000000000003/m.webp",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("webpURLs = %v, want %v", got, want)
	}
	if !slices.Contains(pushedSizes, needle.SizeSmallWebP) {
		t.Error("s.webp is not pushed")
	}
}
