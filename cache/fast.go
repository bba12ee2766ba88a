package cache

import (
	"bytes"
	"net/http"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"

	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/needle"
)

// The fast hit path. The public listener is served with fasthttp
// (internal/serve, Options.Fast), and a plain GET or HEAD of a cached image
// (no conditional or Range header, a path net/http would see unchanged)
// is answered here from the entry's prepared header values, without a
// goroutine, header map or allocation per request. Everything else, misses
// included, goes to the net/http handler through fasthttp's adaptor, so it
// is answered exactly as before; a test compares the answers of both.

// serveFast answers a plain GET or HEAD of a cached image and reports
// whether it did. Callers: the cache's public listener (Server), for
// every request; images are public.
func (c *Cache) serveFast(ctx *fasthttp.RequestCtx) bool {
	if !ctx.IsGet() && !ctx.IsHead() {
		return false
	}
	// When the server began to handle the request: fasthttp read the
	// clock then (or reads it now, with LazyRequestTime).
	start := ctx.Time()
	uri := ctx.Request.Header.RequestURI()
	if !imagehttp.PlainTarget(uri) {
		return false
	}
	conditional, acceptsWebP := scanRequestHeaders(&ctx.Request.Header)
	if conditional {
		return false
	}
	// The path string lives only for the call: ParseImagePath keeps none
	// of it, and ext is read by Choose alone. A conversion would cost an
	// allocation per hit.
	id, size, ext, err := needle.ParseImagePath(unsafe.String(unsafe.SliceData(uri), len(uri)))
	if err != nil {
		return false
	}
	choice := imagehttp.Choose(nil, size, ext)
	if choice.Vary && acceptsWebP {
		// A bare size, chosen by Accept: its WebP variant when the
		// request accepts WebP, as imagehttp.Choose does for net/http.
		choice.Size, _ = size.WebP()
	}
	e, ok := c.entries.GetIfPresent(key{id, choice.Size})
	if !ok || (e.noVariant && choice.Fallback == choice.Size) {
		// A miss is loaded on the net/http path, which also answers the
		// 404 of a variant the photo does not have. (A bare size whose
		// variant the photo lacks is a hit: the entry under the
		// variant's key holds the size itself.)
		return false
	}
	if !e.acquire() {
		return false // evicted this instant: a miss
	}
	c.metrics.hits.Add(1)
	hdr := &ctx.Response.Header
	if choice.Vary {
		hdr.SetCanonical(imagehttp.RawVary, imagehttp.RawAccept)
	}
	hdr.SetCanonical(imagehttp.RawETag, e.etagB)
	hdr.SetCanonical(imagehttp.RawLastModified, e.lastModifiedB)
	hdr.SetCanonical(imagehttp.RawCacheControl, imagehttp.RawImmutable)
	hdr.SetCanonical(imagehttp.RawAcceptRanges, imagehttp.RawBytes)
	hdr.SetCanonical(imagehttp.RawNoSniffName, imagehttp.RawNoSniff)
	hdr.SetContentTypeBytes(e.contentTypeB)
	if !ctx.IsHead() {
		c.metrics.bytesServed.Add(float64(len(e.data)))
	}
	switch {
	case e.slot == nil:
		// Entries are never modified, so the answer is written from the
		// cached bytes themselves.
		ctx.Response.SetBodyRaw(e.data)
	case ctx.IsHead():
		c.answerFromMapping(ctx, e)
	default:
		// Over plain TCP, the headers under TCP_CORK and the image with
		// sendfile from the memfd; the body's Close, once the answer is
		// written, uncorks and releases the slot.
		if h := newLargeHit(ctx.Conn(), e.slot); h != nil {
			ctx.Response.ImmediateHeaderFlush = true
			ctx.Response.SetBodyStream(h, len(e.data))
			c.metrics.bytesSent.Add(float64(len(e.data)))
		} else {
			c.answerFromMapping(ctx, e)
		}
	}
	c.metrics.countStatus(http.StatusOK)
	c.metrics.latency.Observe(time.Since(start).Seconds())
	return true
}

// scanRequestHeaders reports, in one pass over the request's headers,
// whether any makes the request conditional or partial
// (imagehttp.ConditionalHeaders: net/http answers those) and whether an
// Accept header accepts WebP (imagehttp.AcceptValueWebP). Names are
// matched without regard to case, as net/http's canonical names are.
func scanRequestHeaders(h *fasthttp.RequestHeader) (conditional, acceptsWebP bool) {
	for k, v := range h.All() {
		switch len(k) {
		case len("Accept"):
			// Every Accept header counts, as for imagehttp.Choose. The
			// string only lives for the call.
			if !acceptsWebP && bytes.EqualFold(k, rawAccept) {
				acceptsWebP = imagehttp.AcceptValueWebP(unsafe.String(unsafe.SliceData(v), len(v)))
			}
		case len("Range"), len("If-Match"), len("If-None-Match"), len("If-Modified-Since"), len("If-Unmodified-Since"):
			// (If-Range has the length of If-Match.)
			for _, name := range imagehttp.ConditionalHeaders {
				if len(name) == len(k) && bytes.EqualFold(k, []byte(name)) {
					return true, false
				}
			}
		}
	}
	return false, acceptsWebP
}

// rawAccept is the Accept header's name.
var rawAccept = []byte("Accept")

// slotKey is the request user value under which a fast answer written
// from the memfd's mapping holds its slot.
type slotKey struct{}

// answerFromMapping answers with e's bytes copied from the memfd's mapping
// (a HEAD, which sends none, or a TLS connection, which must encrypt
// them). The request releases the slot when it is reset for the next
// request on the connection, or released: after the answer was written.
func (c *Cache) answerFromMapping(ctx *fasthttp.RequestCtx, e *entry) {
	ctx.SetUserValue(slotKey{}, (*slotRelease)(e.slot))
	ctx.Response.SetBodyRaw(e.data)
}
