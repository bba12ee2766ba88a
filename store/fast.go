package store

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// The fast image path.
//
// The store serves HTTP with fasthttp (internal/serve, Options.Fast): net/http
// spends more CPU on a thumbnail GET (parsing into a header map, a
// goroutine and a response writer per request, headers sorted and written
// apart from the body) than the read and the checksum of the image. The
// plain image GET or HEAD, which is nearly every request a store sees, is
// answered here without allocating: the needle is read (one pread) and
// verified into a pooled buffer, and fasthttp writes the headers and that
// buffer in one write, or one writev for an image larger than its write
// buffer. Everything else, which is every request with a conditional or
// Range header, a bare size whose needle the Accept header chooses, any
// path that is not a plain /p/ path, and /healthz,
// /readyz and /metrics, goes to httpHandler.ServeHTTP through fasthttp's
// net/http adaptor, so its semantics are exactly those of the net/http
// path. The answers of both paths carry the same headers and bodies (a
// test compares them).

// Header values of the store's fast answers that imagehttp does not
// share, as net/http writes them.
var (
	valNoStore = []byte("no-store")

	valErrors = map[string][]byte{
		ErrorVolumeNotHere:     []byte(ErrorVolumeNotHere),
		ErrorVolumeUnavailable: []byte(ErrorVolumeUnavailable),
		ErrorCorrupt:           []byte(ErrorCorrupt),
		ErrorRead:              []byte(ErrorRead),
	}
	bodyNotFound = []byte(`{"error":"image not found"}` + "\n")

	// mimeBytes holds the Content-Type of each needle content type.
	mimeBytes = func() [256][]byte {
		var t [256][]byte
		for i := range t {
			t[i] = []byte(needle.ContentType(i).MIME())
		}
		return t
	}()
)

// readBufKey is the request user value under which a read buffer waits
// for the answer written from it.
type readBufKey struct{}

// serveFast answers a plain GET or HEAD of an image and reports whether it
// did; it declines every other request. Callers: the store's HTTP server
// (internal/serve) for every request; the images are public, as on the
// net/http path.
func (h *httpHandler) serveFast(ctx *fasthttp.RequestCtx) bool {
	if !ctx.IsGet() && !ctx.IsHead() {
		return false
	}
	uri := ctx.Request.Header.RequestURI()
	if !imagehttp.PlainTarget(uri) {
		return false
	}
	for _, name := range imagehttp.ConditionalHeaders {
		if ctx.Request.Header.Peek(name) != nil {
			return false
		}
	}
	id, size, ext, err := needle.ParseImagePath(string(uri))
	if err != nil {
		return false // the 400 answer names the error; net/http writes it
	}
	if imagehttp.Choose(nil, size, ext).Vary {
		// A bare size chosen by Accept, answered with "Vary: Accept":
		// net/http's path makes the choice.
		return false
	}
	start := time.Now()
	code := h.readFast(ctx, id, size)
	if code == declined {
		return false
	}
	h.srv.metrics.countStatus(code)
	h.srv.metrics.latency.Observe(time.Since(start).Seconds())
	return true
}

// declined is readFast's answer for a read it leaves to the net/http path,
// which answers it in full.
const declined = -1

// readFast reads, verifies and answers one image, as serveImage and
// answerRead do on the net/http path, from a plain or an EC volume. A
// needle whose content type is not an image type is declined: the
// net/http path answers it as corrupt, never as an image.
func (h *httpHandler) readFast(ctx *fasthttp.RequestCtx, id needle.PhotoID, size needle.SizeCode) int {
	v, err := h.srv.store.Volume(id.Vid)
	var ev *volume.ECVolume
	if errors.Is(err, ErrVolumeNotHere) {
		ev, err = h.srv.store.ECVolume(id.Vid)
	}
	if err != nil {
		if errors.Is(err, ErrVolumeNotHere) {
			return fastFailure(ctx, http.StatusNotFound, ErrorVolumeNotHere, bodyNotHere)
		}
		return fastFailure(ctx, http.StatusServiceUnavailable, ErrorVolumeUnavailable, bodyUnavailable)
	}
	rb := h.pools[sizePool(size)].Get().(*readBuf)
	var n needle.Needle
	var buf []byte
	if ev != nil {
		// Not ctx itself: a fasthttp RequestCtx is reused once the handler
		// returns, and a context derived from it would outlive it. A
		// degraded read is bounded as a net/http answer is.
		rctx, cancel := context.WithTimeout(context.Background(), h.srv.opts.WriteTimeout)
		n, buf, err = ev.Read(rctx, id.Key, id.Cookie, size, rb.b)
		cancel()
	} else {
		n, buf, err = v.Read(id.Key, id.Cookie, size, rb.b)
	}
	rb.keep(buf)
	switch {
	case err == nil:
		if mimeBytes[n.ContentType] == nil || !imagehttp.IsImageContentType(hdrMIME[n.ContentType][0]) {
			rb.Close()
			return declined
		}
	case errors.Is(err, volume.ErrNotFound):
		rb.Close()
		ctx.Response.Header.SetCanonical(imagehttp.RawCacheControl, imagehttp.RawCacheNotFound)
		return fastStatic(ctx, http.StatusNotFound, bodyNotFound)
	case volume.IsCorruption(err):
		rb.Close()
		h.srv.reportCorrupt(id.Vid, id.Key, size, err)
		return fastFailure(ctx, http.StatusInternalServerError, ErrorCorrupt, bodyCorrupt)
	case errors.Is(err, volume.ErrClosed):
		rb.Close()
		return fastFailure(ctx, http.StatusServiceUnavailable, ErrorVolumeUnavailable, bodyUnavailable)
	case errors.Is(err, volume.ErrUnrecoverable):
		// Too few shards of an EC volume answer now; another holder or a
		// rebuild may serve it later.
		rb.Close()
		h.srv.opts.Logger.Warn("EC read unrecoverable", "vid", id.Vid, "key", id.Key, "size", size.String(), "err", err)
		return fastFailure(ctx, http.StatusServiceUnavailable, ErrorVolumeUnavailable, bodyUnavailable)
	default:
		rb.Close()
		h.srv.opts.Logger.Error("image read failed", "vid", id.Vid, "key", id.Key, "size", size.String(), "err", err)
		return fastFailure(ctx, http.StatusInternalServerError, ErrorRead, bodyReadError)
	}

	var tagBuf [18]byte
	var lmBuf [len(http.TimeFormat) + 4]byte
	modTime := time.Unix(0, n.AppendTime).UTC().Truncate(time.Second)
	hdr := &ctx.Response.Header
	hdr.SetCanonical(imagehttp.RawETag, imagehttp.AppendETag(tagBuf[:0], n.Checksum))
	hdr.SetCanonical(imagehttp.RawLastModified, modTime.AppendFormat(lmBuf[:0], http.TimeFormat))
	hdr.SetCanonical(imagehttp.RawCacheControl, imagehttp.RawImmutable)
	hdr.SetCanonical(imagehttp.RawAcceptRanges, imagehttp.RawBytes)
	hdr.SetCanonical(imagehttp.RawNoSniffName, imagehttp.RawNoSniff)
	hdr.SetContentTypeBytes(mimeBytes[n.ContentType])
	// The body is written from the pooled buffer after this returns; the
	// request closes rb (returning it to its pool) when it is reset for
	// the next request on the connection, or released.
	ctx.Response.SetBodyRaw(n.Data)
	ctx.SetUserValue(readBufKey{}, rb)
	if !ctx.IsHead() {
		h.srv.metrics.bytesServed.Add(float64(len(n.Data)))
	}
	return http.StatusOK
}

// fastFailure is imagehttp.Failure on the fast path.
func fastFailure(ctx *fasthttp.RequestCtx, code int, reason string, body []byte) int {
	ctx.Response.Header.SetCanonical(imagehttp.RawCacheControl, valNoStore)
	ctx.Response.Header.SetCanonical(imagehttp.RawErrorHeaderName, valErrors[reason])
	return fastStatic(ctx, code, body)
}

// fastStatic is imagehttp.WriteStatic on the fast path. A HEAD gets the
// headers, Content-Length included, without the body.
func fastStatic(ctx *fasthttp.RequestCtx, code int, body []byte) int {
	ctx.Response.Header.SetContentTypeBytes(imagehttp.RawJSONContentType)
	ctx.Response.Header.SetCanonical(imagehttp.RawNoSniffName, imagehttp.RawNoSniff)
	ctx.SetStatusCode(code)
	ctx.Response.SetBodyRaw(body)
	return code
}
