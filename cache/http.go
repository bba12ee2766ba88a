package cache

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/needle"
)

// The HTTP side of the cache: the image path's answers, written by
// internal/imagehttp as a store writes them, and eviction. The engine
// (lookup, admission, loading, invalidation) is in cache.go; fast.go
// serves plain hits without net/http.

// Handler returns the public http.Handler of the image path: GET and HEAD
// of /p/...; other paths get the store's JSON 404, and DELETE is not
// allowed (eviction is internal, see EvictHandler). Mount it at /p/ on a
// shared mux, or use Server.
func (c *Cache) Handler() http.Handler { return http.HandlerFunc(c.serveHTTP) }

// EvictHandler returns the internal http.Handler of eviction: DELETE
// /p/<photo ID>[/<size>[.<ext>]]. It checks no credential itself: serve it
// only where the caller is authenticated (Server's internal listener
// admits gateways only).
func (c *Cache) EvictHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, needle.ImagePathPrefix) {
			imagehttp.NoRoute(w)
			return
		}
		if r.Method != http.MethodDelete {
			c.metrics.countStatus(imagehttp.MethodNotAllowed(w, "DELETE"))
			return
		}
		c.metrics.countStatus(c.serveDelete(w, r))
	})
}

func (c *Cache) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, needle.ImagePathPrefix) {
		imagehttp.NoRoute(w)
		return
	}
	start := time.Now()
	code := c.serveImage(w, r)
	c.metrics.countStatus(code)
	c.metrics.latency.Observe(time.Since(start).Seconds())
}

// Static JSON bodies of the cache's own error answers.
var (
	bodyUpstream = []byte(`{"error":"no replica could serve the image"}` + "\n")
	bodyTimeout  = []byte(`{"error":"the replicas did not answer in time"}` + "\n")
)

// serveImage answers one request under /p/ and returns its status.
func (c *Cache) serveImage(w http.ResponseWriter, r *http.Request) int {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	default:
		return imagehttp.MethodNotAllowed(w, "GET, HEAD")
	}
	id, size, _, err := needle.ParseImagePath(r.URL.Path)
	if err != nil {
		return imagehttp.BadPath(w, err)
	}
	e, err := c.get(key{id, size}, c.fromCDN(r))
	switch {
	case err == nil:
		return c.answer(w, r, e)
	case errors.Is(err, errNotFound):
		return imagehttp.NotFound(w)
	case errors.Is(err, errTimeout):
		return imagehttp.Failure(w, http.StatusGatewayTimeout, imagehttp.ErrorUpstreamTimeout, bodyTimeout)
	default:
		return imagehttp.Failure(w, http.StatusBadGateway, imagehttp.ErrorUpstreamUnavailable, bodyUpstream)
	}
}

// answer serves a cached or fetched image.
func (c *Cache) answer(w http.ResponseWriter, r *http.Request, e *entry) int {
	im := imagehttp.Image{
		Data:         e.data,
		ContentType:  e.contentType,
		ETag:         e.etag,
		LastModified: e.lastModified,
		ModTime:      e.modTime,
	}
	code, written := imagehttp.Serve(w, r, &im)
	if written > 0 {
		c.metrics.bytesServed.Add(float64(written))
	}
	return code
}

// fromCDN reports whether the request came through a CDN.
func (c *Cache) fromCDN(r *http.Request) bool {
	v := r.Header[c.cdnHeader]
	return len(v) > 0 && v[0] != ""
}

// serveDelete answers DELETE /p/<photo ID>[/<size>[.<ext>]]: 204 after
// evicting every size of the photo.
func (c *Cache) serveDelete(w http.ResponseWriter, r *http.Request) int {
	rest := strings.TrimPrefix(r.URL.Path, needle.ImagePathPrefix)
	idPart, _, hasSize := strings.Cut(rest, "/")
	id, err := needle.ParsePhotoID(idPart)
	if err == nil && hasSize {
		_, _, _, err = needle.ParseImagePath(r.URL.Path)
	}
	if err != nil {
		return imagehttp.BadPath(w, err)
	}
	c.Invalidate(id)
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent
}
