package cache

import (
	"net/http"
	"time"
	"unsafe"

	"github.com/haybale/haybale/internal/evloop"
	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/needle"
)

// The event-loop hit path. With ServerOptions.EventLoop the public
// listener is served on event loops (internal/evloop), and a plain GET or
// HEAD of a cached image is answered by serveLoop on the loop, with the
// same checks and the same answer as serveFast: the entry's prepared
// header values, its bytes (a large image from the memfd with sendfile
// when nothing is queued before it, holding its slot until written).
// Everything else, misses included, goes to the net/http handler off the
// loop.

// serveLoop answers a plain GET or HEAD of a cached image on an event
// loop and declines every other request. Callers: the cache's public
// listener (Server), for every request; images are public.
func (c *Cache) serveLoop(req *evloop.Request, a *evloop.Answer, _ bool) evloop.Result {
	if !req.IsGet() && !req.IsHead() {
		return evloop.Declined
	}
	start := time.Now()
	uri := req.Target
	if !imagehttp.PlainTarget(uri) {
		return evloop.Declined
	}
	for _, name := range imagehttp.ConditionalHeaders {
		if req.Peek(name) != nil {
			return evloop.Declined
		}
	}
	// The path string lives only for the call, as in serveFast.
	id, size, ext, err := needle.ParseImagePath(unsafe.String(unsafe.SliceData(uri), len(uri)))
	if err != nil {
		return evloop.Declined
	}
	choice := imagehttp.Choose(nil, size, ext)
	if choice.Vary {
		webp := false
		req.Values("Accept", func(v []byte) bool {
			// The string only lives for the call.
			webp = imagehttp.AcceptValueWebP(unsafe.String(unsafe.SliceData(v), len(v)))
			return !webp
		})
		if webp {
			choice.Size, _ = size.WebP()
		}
	}
	e, ok := c.entries.GetIfPresent(key{id, choice.Size})
	if !ok || (e.noVariant && choice.Fallback == choice.Size) {
		return evloop.Declined // a miss, loaded on the net/http path
	}
	if !e.acquire() {
		return evloop.Declined // evicted this instant: a miss
	}
	c.metrics.hits.Add(1)
	if choice.Vary {
		a.Header("Vary", imagehttp.RawAccept)
	}
	a.Status = http.StatusOK
	a.Header("Etag", e.etagB)
	a.Header("Last-Modified", e.lastModifiedB)
	a.Header("Cache-Control", imagehttp.RawImmutable)
	a.Header("Accept-Ranges", imagehttp.RawBytes)
	a.Header("X-Content-Type-Options", imagehttp.RawNoSniff)
	a.Header("Content-Type", e.contentTypeB)
	a.HeaderInt("Content-Length", int64(len(e.data)))
	if e.slot != nil {
		// The answer's reference to the slot, dropped once it is written.
		a.Done = (*slotRelease)(e.slot)
	}
	if !req.IsHead() {
		c.metrics.bytesServed.Add(float64(len(e.data)))
		if e.slot != nil && a.CanSendFile() {
			a.SendFile(e.slot.a.fd, e.slot.off, int64(len(e.data)))
			c.metrics.bytesSent.Add(float64(len(e.data)))
		} else {
			// Entries are never modified: the answer is written from the
			// cached bytes (or the memfd's mapping) themselves.
			a.Body = e.data
		}
	}
	c.metrics.countStatus(http.StatusOK)
	c.metrics.latency.Observe(time.Since(start).Seconds())
	return evloop.Answered
}
