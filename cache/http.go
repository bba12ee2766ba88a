package cache

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/needle"
)

// The HTTP side of the cache: the image path's answers, written by
// internal/imagehttp as a store writes them, and eviction. The engine
// (lookup, admission, loading, invalidation) is in cache.go; fast.go
// serves plain hits without net/http. Pushes (PUT on the internal
// listener) cache a new photo's images before their first view.

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

// MaxPushBytes bounds the image of one push (PUT on the internal
// listener); pushes are meant for the small sizes of new photos.
const MaxPushBytes = 4 << 20

// PushHandler returns the internal http.Handler of pushes: PUT
// /p/<photo ID>/<size>[.webp] with the image as the body and the
// Content-Type, ETag and Last-Modified headers the stores serve it with.
// It caches the image as if a miss had fetched it, so the first view of a
// new photo is a hit. Callers: the gateway, right after it stored the
// photo. It checks no credential itself: serve it only where the caller is
// authenticated (Server's internal listener admits gateways only).
//
// Answers: 204 cached; 400 for a malformed path or headers (JSON error);
// 413 for a body over MaxPushBytes; 421 when this node does not own the
// photo's key (nothing cached); 409 when the photo was deleted within the
// deletion memory (nothing cached).
func (c *Cache) PushHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, needle.ImagePathPrefix) {
			imagehttp.NoRoute(w)
			return
		}
		if r.Method != http.MethodPut {
			c.metrics.countStatus(imagehttp.MethodNotAllowed(w, "PUT"))
			return
		}
		code := c.servePush(w, r)
		c.metrics.countStatus(code)
	})
}

// servePush answers one push and returns its status.
func (c *Cache) servePush(w http.ResponseWriter, r *http.Request) int {
	id, size, _, err := needle.ParseImagePath(r.URL.Path)
	if err != nil {
		return imagehttp.BadPath(w, err)
	}
	if r.ContentLength > MaxPushBytes {
		w.Header().Set("Connection", "close")
		return pushAnswer(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("pushed image over %d bytes", MaxPushBytes))
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxPushBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return pushAnswer(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("pushed image over %d bytes", MaxPushBytes))
		}
		return pushAnswer(w, http.StatusBadRequest, "reading the pushed image: "+err.Error())
	}
	if len(data) == 0 {
		return pushAnswer(w, http.StatusBadRequest, "empty pushed image")
	}
	e, err := newEntry(&Loaded{
		Data: data, ContentType: r.Header.Get("Content-Type"),
		ETag: r.Header.Get("ETag"), LastModified: r.Header.Get("Last-Modified"),
	})
	if err != nil {
		return pushAnswer(w, http.StatusBadRequest, "pushed image: "+err.Error())
	}
	if !c.Owns(id.Key) {
		c.metrics.pushes[pushNotOwner].Inc()
		return pushAnswer(w, http.StatusMisdirectedRequest, "this cache node does not own photo "+id.String())
	}
	if !c.insert(key{id, size}, e) {
		c.metrics.pushes[pushDeleted].Inc()
		return pushAnswer(w, http.StatusConflict, "photo "+id.String()+" was deleted")
	}
	c.metrics.pushes[pushCached].Inc()
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent
}

// pushAnswer writes a JSON error answer of a push and returns its status.
func pushAnswer(w http.ResponseWriter, code int, msg string) int {
	imagehttp.WriteJSON(w, code, map[string]any{"error": msg})
	return code
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

// serveImage answers one request under /p/ and returns its status. The
// needle is chosen by imagehttp.Choose: ".webp" names the WebP variant, a
// bare size follows the Accept header with "Vary: Accept".
func (c *Cache) serveImage(w http.ResponseWriter, r *http.Request) int {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	default:
		return imagehttp.MethodNotAllowed(w, "GET, HEAD")
	}
	id, size, ext, err := needle.ParseImagePath(r.URL.Path)
	if err != nil {
		return imagehttp.BadPath(w, err)
	}
	// Entries are keyed by the needle they hold: a size and its WebP
	// variant are cached apart, and a bare path is answered from the one
	// its Accept header chooses.
	choice := imagehttp.Choose(r.Header, size, ext)
	choice.SetVary(w)
	e, err := c.get(key{id, choice.Size}, choice.Fallback, c.fromCDN(r))
	switch {
	case err == nil:
		// The answer is written (net/http copies it into the connection's
		// buffers or the socket) before the bytes are released.
		defer e.release()
		if e.noVariant && choice.Fallback == choice.Size {
			return imagehttp.NotFound(w) // the photo has no such variant
		}
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
