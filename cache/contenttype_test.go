package cache_test

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/haybale/haybale/cache"
	"github.com/haybale/haybale/needle"
)

// typeRewriter turns the answers of the stores whose HTTP address is in
// rogue into HTML pages, as a hijacked store would send.
type typeRewriter struct {
	base  http.RoundTripper
	rogue map[string]bool
}

func (t *typeRewriter) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil || !t.rogue[r.URL.Host] {
		return resp, err
	}
	resp.Body.Close()
	page := "<script>alert(document.cookie)</script>"
	resp.Header.Set("Content-Type", "text/html")
	resp.Body = io.NopCloser(strings.NewReader(page))
	resp.ContentLength = int64(len(page))
	return resp, nil
}

// TestNonImageContentTypeFailsOver: a replica answering with a Content-Type
// that is not an image type is a bad upstream: the next replica serves the
// image, and with no good replica the answer is 502, never the page.
// Every image answer carries nosniff.
func TestNonImageContentTypeFailsOver(t *testing.T) {
	e := newEnv(t, 2)
	p := e.write(4000)
	reps, _, err := e.cl.Lookup(bg, p.id.Vid)
	if err != nil || len(reps) != 2 {
		t.Fatalf("replicas %v, %v", reps, err)
	}
	tr := newTransport()
	rw := &typeRewriter{base: tr.base, rogue: map[string]bool{reps[0].HTTPAddr: true}}
	tr.base = rw
	nd := e.startNode(cache.Options{}, nil, tr)
	a := nd.get(t, p.path(needle.SizeSmall), nil)
	if a.code != http.StatusOK || a.hdr.Get("Content-Type") != "image/jpeg" || !bytes.Equal(a.body, p.data[needle.SizeSmall]) {
		t.Fatalf("one rogue replica: %v", a)
	}
	if a.hdr.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("image answer without nosniff: %v", a)
	}

	rw.rogue[reps[1].HTTPAddr] = true
	a = nd.get(t, p.path(needle.SizeMedium), nil)
	wantFailure(t, a, http.StatusBadGateway, "upstream-unavailable")
	if strings.Contains(string(a.body), "<script>") {
		t.Errorf("the rogue page was forwarded: %q", a.body)
	}
}
