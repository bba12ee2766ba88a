package store

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net/http"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// fakeWebP returns bytes with a RIFF/WEBP header that differ from every
// JPEG of the test.
func fakeWebP(seed byte, n int) []byte {
	return append([]byte("RIFF\x00\x00\x00\x00WEBPVP8 "), bytes.Repeat([]byte{seed}, n)...)
}

// TestHTTPWebPVariants checks how the image path chooses between a size
// and its WebP variant: by extension, and for a bare size by Accept with
// "Vary: Accept"; and that photos without variants keep being served.
func TestHTTPWebPVariants(t *testing.T) {
	t.Run("fasthttp", func(t *testing.T) { testHTTPWebPVariants(t, false) })
	t.Run("loop", func(t *testing.T) { testHTTPWebPVariants(t, true) })
}

func testHTTPWebPVariants(t *testing.T, loop bool) {
	ts := startServer(t, Options{Dir: "/data", FS: vfs.NewMem()}, ServerOptions{EventLoop: loop})
	ts.allocate(t, 1)
	r := rand.New(rand.NewPCG(7, 8))
	withWebP := randomPhoto(r, 1, 0x100, 100)
	plain := randomPhoto(r, 1, 0x101, 100)
	ts.writePhoto(t, plain)
	var webp [4][]byte
	req := &storepb.WriteRequest{Vid: 1}
	for i, d := range withWebP.data {
		req.Needles = append(req.Needles, &storepb.Needle{
			Key: withWebP.id.Key, Cookie: withWebP.id.Cookie, SizeCode: uint32(i), ContentType: uint32(needle.TypeJPEG), Data: d,
		})
	}
	for i, size := range needle.WebPSizes {
		webp[i] = fakeWebP(byte(i), 50<<i)
		req.Needles = append(req.Needles, &storepb.Needle{
			Key: withWebP.id.Key, Cookie: withWebP.id.Cookie, SizeCode: uint32(size), ContentType: uint32(needle.TypeWebP), Data: webp[i],
		})
	}
	written, err := ts.client.Write(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	webpETag := etagOf(written.Results[4+needle.SizeMedium].GetChecksum())
	jpegETag := etagOf(written.Results[needle.SizeMedium].GetChecksum())

	const chrome = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
	base := needle.ImagePathPrefix + withWebP.id.String() + "/m"
	plainBase := needle.ImagePathPrefix + plain.id.String() + "/m"
	jpegM, webpM := withWebP.data[needle.SizeMedium], webp[needle.SizeMedium]
	cases := []struct {
		name   string
		method string
		path   string
		accept string
		inm    string
		code   int
		ctype  string
		body   []byte
		vary   string
	}{
		{"webp path", "GET", base + ".webp", "", "", 200, "image/webp", webpM, ""},
		{"webp path, upper case", "GET", base + ".WEBP", "image/jpeg", "", 200, "image/webp", webpM, ""},
		{"jpg path from a WebP browser", "GET", base + ".jpg", chrome, "", 200, "image/jpeg", jpegM, ""},
		{"cosmetic extension", "GET", base + ".jpeg", chrome, "", 200, "image/jpeg", jpegM, ""},
		{"bare, WebP browser", "GET", base, chrome, "", 200, "image/webp", webpM, "Accept"},
		{"bare, HEAD", "HEAD", base, chrome, "", 200, "image/webp", nil, "Accept"},
		{"bare, JPEG-only client", "GET", base, "image/jpeg,image/png", "", 200, "image/jpeg", jpegM, "Accept"},
		{"bare, no Accept", "GET", base, "", "", 200, "image/jpeg", jpegM, "Accept"},
		{"bare, WebP refused", "GET", base, "image/webp;q=0,image/*", "", 200, "image/jpeg", jpegM, "Accept"},
		{"bare, revalidated WebP", "GET", base, chrome, webpETag, 304, "", nil, "Accept"},
		{"bare, JPEG ETag from a WebP browser", "GET", base, chrome, jpegETag, 200, "image/webp", webpM, "Accept"},
		{"photo without WebP, bare", "GET", plainBase, chrome, "", 200, "image/jpeg", plain.data[needle.SizeMedium], "Accept"},
		{"photo without WebP, webp path", "GET", plainBase + ".webp", chrome, "", 404, "application/json", nil, ""},
		{"missing photo, bare", "GET", needle.ImagePathPrefix + "1-999-0000000000000001/m", chrome, "", 404, "application/json", nil, "Accept"},
		{"original has no variant", "GET", needle.ImagePathPrefix + withWebP.id.String() + "/o.webp", chrome, "", 404, "application/json", nil, ""},
	}
	for _, c := range cases {
		hdr := map[string]string{}
		if c.accept != "" {
			hdr["Accept"] = c.accept
		}
		if c.inm != "" {
			hdr["If-None-Match"] = c.inm
		}
		resp, body := ts.do(t, c.method, c.path, hdr)
		if resp.StatusCode != c.code {
			t.Errorf("%s: status %d, want %d (%s)", c.name, resp.StatusCode, c.code, body)
			continue
		}
		if c.ctype != "" && resp.Header.Get("Content-Type") != c.ctype {
			t.Errorf("%s: Content-Type %q, want %q", c.name, resp.Header.Get("Content-Type"), c.ctype)
		}
		if c.body != nil && !bytes.Equal(body, c.body) {
			t.Errorf("%s: body of %d bytes is not the expected %d", c.name, len(body), len(c.body))
		}
		if v := resp.Header.Get("Vary"); v != c.vary {
			t.Errorf("%s: Vary %q, want %q", c.name, v, c.vary)
		}
	}
	// Each WebP variant is served at its own path with its own ETag.
	for i, size := range needle.WebPSizes {
		resp, body := ts.do(t, http.MethodGet, needle.ImagePath(withWebP.id, size, ""), nil)
		etag := etagOf(written.Results[4+i].GetChecksum())
		if resp.StatusCode != 200 || !bytes.Equal(body, webp[i]) || resp.Header.Get("Etag") != etag {
			t.Errorf("%v: status %d, %d bytes, ETag %s (want %s)", size, resp.StatusCode, len(body), resp.Header.Get("Etag"), etag)
		}
	}
}
