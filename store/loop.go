package store

import (
	"net/http"
	"time"

	"github.com/haybale/haybale/internal/evloop"
	"github.com/haybale/haybale/internal/imagehttp"
)

// The event-loop image path.
//
// With ServerOptions.EventLoop the store's HTTP connections are served
// on event loops (internal/evloop) instead of by fasthttp, and a plain
// image GET or HEAD is answered by serveLoop on the loop: the same checks
// (plainImage) and the same read and verification (readImage) as the
// fasthttp path, written as the same answer. A read that would wait for
// the disk (a needle not in the page cache, a direct read, any read of an
// EC volume) is not made on the loop: readImage says so having read
// nothing (volume.TryReadRef), and the loop calls serveLoop again on a
// goroutine, where it reads as the fasthttp path does. A large image of a
// connection with nothing queued leaves with sendfile(2) from the volume
// file; any other from the mapping or the read buffer, without a copy.
// Everything else goes to httpHandler.ServeHTTP off the loop.

// loopRequest is an event loop's request as plainImage sees it.
type loopRequest struct{ r *evloop.Request }

func (r loopRequest) getOrHead() bool      { return r.r.IsGet() || r.r.IsHead() }
func (r loopRequest) target() []byte       { return r.r.Target }
func (r loopRequest) has(name string) bool { return r.r.Peek(name) != nil }
func (r loopRequest) acceptsWebP() bool {
	webp := false
	r.r.Values("Accept", func(v []byte) bool {
		webp = acceptValueWebP(v)
		return !webp
	})
	return webp
}

// serveLoop answers a plain GET or HEAD of an image on an event loop (or,
// with mayBlock, off it), and declines every other request. Callers: the
// store's HTTP server (internal/serve, internal/evloop) for every
// request; the images are public, as on the net/http path.
func (h *httpHandler) serveLoop(req *evloop.Request, a *evloop.Answer, mayBlock bool) evloop.Result {
	id, choice, ok := plainImage(loopRequest{req})
	if !ok {
		return evloop.Declined
	}
	start := time.Now()
	// Off the loop, serveLoop runs only for a request it answered Blocked
	// on the loop: the loop's try of the image was refused.
	img := h.readImage(id, choice, mayBlock, mayBlock)
	switch img.code {
	case declined:
		return evloop.Declined
	case blocked:
		return evloop.Blocked
	}
	if choice.Vary {
		// On every answer, failures included, as on the net/http path.
		a.Header("Vary", imagehttp.RawAccept)
	}
	h.writeLoop(a, req.IsHead(), &img)
	h.srv.metrics.countStatus(img.code)
	h.srv.metrics.latency.Observe(time.Since(start).Seconds())
	return evloop.Answered
}

// Header names of the loop's answers, as net/http writes them.
const (
	hdrContentType   = "Content-Type"
	hdrContentLength = "Content-Length"
)

// writeLoop writes img's answer into a.
func (h *httpHandler) writeLoop(a *evloop.Answer, head bool, img *imageRead) {
	a.Status = img.code
	if img.code != http.StatusOK {
		if img.reason != "" {
			a.Header("Cache-Control", valNoStore)
			a.Header(ErrorHeader, valErrors[img.reason])
		} else {
			a.Header("Cache-Control", imagehttp.RawCacheNotFound)
		}
		a.Header(hdrContentType, imagehttp.RawJSONContentType)
		a.Header("X-Content-Type-Options", imagehttp.RawNoSniff)
		a.HeaderInt(hdrContentLength, int64(len(img.body)))
		if !head {
			a.Body = img.body
		}
		return
	}
	n, rb := &img.n, img.rb
	var buf [64]byte
	a.Header("Etag", imagehttp.AppendETag(buf[:0], n.Checksum))
	a.Header("Last-Modified", appendLastModified(buf[:0], n))
	a.Header("Cache-Control", imagehttp.RawImmutable)
	a.Header("Accept-Ranges", imagehttp.RawBytes)
	a.Header("X-Content-Type-Options", imagehttp.RawNoSniff)
	a.Header(hdrContentType, mimeBytes[n.ContentType])
	a.HeaderInt(hdrContentLength, int64(len(n.Data)))
	// rb holds the bytes (the mapping, or the read buffer) until the loop
	// has written them, then goes back to its pool.
	a.Done = rb
	if head {
		return
	}
	h.srv.metrics.bytesServed.Add(float64(len(n.Data)))
	if fd, off, ok := rb.ref.Source(); ok && len(n.Data) >= sendfileMin && a.CanSendFile() {
		a.SendFile(fd, off, int64(len(n.Data)))
		h.srv.metrics.bytesSent.Add(float64(len(n.Data)))
		return
	}
	a.Body = n.Data
}
