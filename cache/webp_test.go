package cache_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/haybale/haybale/cache"
	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/needle"
)

const chromeAccept = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"

// fakeWebP returns n bytes with a RIFF/WEBP header.
func fakeWebP(seed byte, n int) []byte {
	return append([]byte("RIFF\x00\x00\x00\x00WEBPVP8 "), bytes.Repeat([]byte{seed}, n)...)
}

// writeWithWebP stores a photo of four random JPEG sizes and their WebP
// variants, in one batch, and returns it with the variants' bytes.
func (e *env) writeWithWebP() (*photo, [4][]byte) {
	e.t.Helper()
	p := &photo{}
	var webp [4][]byte
	var ims []client.Image
	for i, s := range needle.PhotoSizes {
		p.data[i] = make([]byte, 200<<i)
		for j := range p.data[i] {
			p.data[i][j] = byte(e.r.Uint32())
		}
		ims = append(ims, client.Image{Size: s, ContentType: needle.TypeJPEG, Data: p.data[i]})
	}
	for i, s := range needle.WebPSizes {
		webp[i] = fakeWebP(byte(i+1), 100<<i)
		ims = append(ims, client.Image{Size: s, ContentType: needle.TypeWebP, Data: webp[i]})
	}
	var err error
	for range 100 {
		if p.id, err = e.cl.WritePhoto(bg, ims); err == nil {
			return p, webp
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatal(err)
	return nil, webp
}

// TestWebPVariantsCachedApart checks that the cache keys entries by
// variant: a bare path answers by Accept with "Vary: Accept", exactly as
// the store does, and each variant is fetched once.
func TestWebPVariantsCachedApart(t *testing.T) {
	e := newEnv(t, 1)
	p, webp := e.writeWithWebP()
	plain := e.write(4000)
	storeBase := "http://" + e.c.Stores[0].HTTPAddr()
	nd := e.startNode(cache.Options{}, nil, nil)
	bare := needle.ImagePath(p.id, needle.SizeSmall, "")
	cases := []struct {
		name   string
		path   string
		accept string
		body   []byte
		ctype  string
	}{
		{"bare, WebP browser", bare, chromeAccept, webp[needle.SizeSmall], "image/webp"},
		{"bare, JPEG-only client", bare, "image/jpeg", p.data[needle.SizeSmall], "image/jpeg"},
		{"webp path", bare + ".webp", "", webp[needle.SizeSmall], "image/webp"},
		{"jpg path, WebP browser", bare + ".jpg", chromeAccept, p.data[needle.SizeSmall], "image/jpeg"},
		{"photo without WebP, bare", needle.ImagePath(plain.id, needle.SizeSmall, ""), chromeAccept, plain.data[needle.SizeSmall], "image/jpeg"},
	}
	for _, c := range cases {
		hdr := map[string]string{"Accept": c.accept}
		want := do(t, nd.hc, http.MethodGet, storeBase+c.path, hdr)
		for round := range 2 {
			a := nd.get(t, c.path, hdr)
			if a.code != 200 || !bytes.Equal(a.body, c.body) || a.hdr.Get("Content-Type") != c.ctype {
				t.Fatalf("%s, round %d: %v", c.name, round, a)
			}
			if a.String() != want.String() {
				t.Errorf("%s, round %d: cache answer\n%v\nstore answer\n%v", c.name, round, a, want)
			}
		}
	}
	// Four needles were read: s.webp, s, and the plain photo's s.webp
	// (404) then s; every second round and the explicit paths were hits,
	// the plain photo's second round too: the cache remembers that it has
	// no variant.
	if got := nd.tr.count.Load(); got != 4 {
		t.Errorf("%d store reads, want 4", got)
	}
	// Its .webp path is still the store's 404, without a store read.
	webpPath := needle.ImagePath(plain.id, needle.SizeSmall, "webp")
	want := do(t, nd.hc, http.MethodGet, storeBase+webpPath, nil)
	if a := nd.get(t, webpPath, nil); a.code != 404 || a.String() != want.String() || !bytes.Equal(a.body, want.body) {
		t.Errorf("webp path of a photo without variants:\n%v\nstore:\n%v", a, want)
	}
	if got := nd.tr.count.Load(); got != 4 {
		t.Errorf("%d store reads after the .webp path, want 4", got)
	}
}

// put sends a push of an image to a node's internal listener.
func put(t *testing.T, hc *http.Client, url string, body []byte, hdr map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("PUT %s: %v", url, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return answer{resp.StatusCode, resp.Header, b.Bytes()}
}

// TestPushMakesFirstViewAHit pushes a new photo's small sizes to its
// owning node, as the gateway does: the first views are hits that answer
// exactly as the store would, without a store read.
func TestPushMakesFirstViewAHit(t *testing.T) {
	e := newEnv(t, 1)
	p, webp := e.writeWithWebP()
	storeBase := "http://" + e.c.Stores[0].HTTPAddr()
	nd := e.startNode(cache.Options{}, nil, nil)
	type pushed struct {
		size needle.SizeCode
		data []byte
	}
	for _, im := range []pushed{{needle.SizeThumb, p.data[0]}, {needle.SizeThumbWebP, webp[0]}, {needle.SizeSmall, p.data[1]}, {needle.SizeSmallWebP, webp[1]}} {
		path := needle.ImagePath(p.id, im.size, "")
		st := do(t, nd.hc, http.MethodGet, storeBase+path, nil)
		a := put(t, nd.hc, nd.internal+path, im.data, map[string]string{
			"Content-Type": st.hdr.Get("Content-Type"), "ETag": st.hdr.Get("Etag"), "Last-Modified": st.hdr.Get("Last-Modified"),
		})
		if a.code != http.StatusNoContent {
			t.Fatalf("push %v: %v %s", im.size, a, a.body)
		}
	}
	for _, accept := range []string{chromeAccept, "image/jpeg"} {
		for _, s := range []needle.SizeCode{needle.SizeThumb, needle.SizeSmall} {
			path := needle.ImagePath(p.id, s, "")
			hdr := map[string]string{"Accept": accept}
			a, want := nd.get(t, path, hdr), do(t, nd.hc, http.MethodGet, storeBase+path, hdr)
			if a.code != 200 || a.String() != want.String() || !bytes.Equal(a.body, want.body) {
				t.Errorf("%s with Accept %q:\n%v\nstore:\n%v", path, accept, a, want)
			}
		}
	}
	if got := nd.tr.count.Load(); got != 0 {
		t.Errorf("%d store reads after the push, want 0", got)
	}
	if got := nd.metric(t, `haybale_cache_pushes_total{result="cached"}`); got != 4 {
		t.Errorf("pushes cached %v, want 4", got)
	}
	if got := nd.metric(t, "haybale_cache_hits_total"); got != 4 {
		t.Errorf("hits %v, want 4", got)
	}

	// Refused pushes.
	good := map[string]string{"Content-Type": "image/jpeg", "ETag": `"0123456789abcdef"`, "Last-Modified": time.Now().UTC().Format(http.TimeFormat)}
	with := func(k, v string) map[string]string {
		h := map[string]string{}
		for a, b := range good {
			h[a] = b
		}
		h[k] = v
		return h
	}
	q := e.write(4000)
	qpath := nd.internal + needle.ImagePath(q.id, needle.SizeThumb, "")
	for name, c := range map[string]struct {
		url  string
		body []byte
		hdr  map[string]string
		code int
	}{
		"not an image type":  {qpath, q.data[0], with("Content-Type", "text/html"), 400},
		"no ETag":            {qpath, q.data[0], with("ETag", ""), 400},
		"bad Last-Modified":  {qpath, q.data[0], with("Last-Modified", "yesterday"), 400},
		"empty body":         {qpath, nil, good, 400},
		"malformed path":     {nd.internal + "/p/" + q.id.String() + "/zz", q.data[0], good, 400},
		"too large":          {qpath, make([]byte, cache.MaxPushBytes+1), good, 413},
		"public port is 405": {nd.base + needle.ImagePath(q.id, needle.SizeThumb, ""), q.data[0], good, 405},
	} {
		if a := put(t, nd.hc, c.url, c.body, c.hdr); a.code != c.code || (c.code != 405 && !strings.Contains(string(a.body), `"error"`)) {
			t.Errorf("%s: %d %s, want %d with a JSON error", name, a.code, a.body, c.code)
		}
	}
	// A photo deleted (and evicted) is not put back by a late push.
	if err := e.cl.Delete(bg, q.id); err != nil {
		t.Fatal(err)
	}
	do(t, nd.hc, http.MethodDelete, nd.internal+needle.ImagePathPrefix+q.id.String(), nil)
	if a := put(t, nd.hc, qpath, q.data[0], good); a.code != http.StatusConflict {
		t.Errorf("push after delete: %v", a)
	}
	if a := nd.get(t, needle.ImagePath(q.id, needle.SizeThumb, ""), nil); a.code != 404 {
		t.Errorf("GET after a refused push: %v", a)
	}
}

// TestPushToAnotherOwner checks that a node refuses a push for a key it
// does not own.
func TestPushToAnotherOwner(t *testing.T) {
	e := newEnv(t, 1)
	urls := []string{"http://cache-a:1", "http://cache-b:1"}
	var p *photo
	for range 40 {
		if q := e.write(2000); needle.Owner(q.id.Key, urls) == 1 {
			p = q
			break
		}
	}
	if p == nil {
		t.Fatal("no photo owned by the second node")
	}
	nd := e.startNode(cache.Options{Nodes: urls, Self: urls[0]}, nil, nil)
	hdr := map[string]string{"Content-Type": "image/jpeg", "ETag": `"0123456789abcdef"`, "Last-Modified": time.Now().UTC().Format(http.TimeFormat)}
	if a := put(t, nd.hc, nd.internal+needle.ImagePath(p.id, needle.SizeThumb, ""), p.data[0], hdr); a.code != http.StatusMisdirectedRequest {
		t.Errorf("push to a node that does not own the key: %v", a)
	}
}
