package store

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// Values of the X-Haybale-Error header, which tell a cache or CDN why an
// image was not served. They are defined, with the rest of the image
// answers the store shares with the cache, in internal/imagehttp.
const (
	// ErrorHeader names the header.
	ErrorHeader = imagehttp.ErrorHeader
	// ErrorVolumeNotHere: this store does not hold the photo's volume; ask
	// the directory for a replica.
	ErrorVolumeNotHere = imagehttp.ErrorVolumeNotHere
	// ErrorVolumeUnavailable: the store holds the volume but cannot serve
	// it (it failed to open, or the store is shutting down); try a replica.
	ErrorVolumeUnavailable = imagehttp.ErrorVolumeUnavailable
	// ErrorCorrupt: the stored bytes failed verification; try a replica.
	ErrorCorrupt = imagehttp.ErrorCorrupt
	// ErrorRead: the disk failed to read the bytes; try a replica.
	ErrorRead = imagehttp.ErrorRead
)

// hdrMIME holds the Content-Type value slice of each needle content type.
// net/http only reads header value slices, and each has len == cap, so an
// append by anyone else copies rather than writes into them.
var hdrMIME = func() [256][]string {
	var t [256][]string
	for i := range t {
		t[i] = []string{needle.ContentType(i).MIME()}
	}
	return t
}()

// Static JSON bodies of the store's own error answers.
var (
	bodyNotHere     = []byte(`{"error":"volume not on this store"}` + "\n")
	bodyUnavailable = []byte(`{"error":"volume unavailable"}` + "\n")
	bodyCorrupt     = []byte(`{"error":"stored image failed verification"}` + "\n")
	bodyReadError   = []byte(`{"error":"stored image could not be read"}` + "\n")
)

// Buffer pooling. Reads go into buffers pooled per size code: the sizes of
// one code are alike (thumbnails are small, large images are large), so a
// pool's buffers soon fit its images and a GET allocates no buffer. A pool
// starts with no buffer at all: a read that finds none, or one too small,
// gets a new one from the volume, sized by the needle's length as the
// index gives it and rounded up to volume.ReadBufferClass, which then
// replaces the smaller one in the pool. So a pool holds buffers of the
// largest needle of its kind read lately, rounded up to a class, and no
// more: concurrent reads of small images hold small buffers. Needles the
// fast path serves from the volume file's mapping use no buffer.
const (
	maxPooledBuffer = 8 << 20 // larger buffers are left to the GC
	numSizePools    = len(needle.StoredSizes)
)

// sizePool returns the pool index of a valid size code: its place in
// needle.StoredSizes.
func sizePool(size needle.SizeCode) int {
	if size.IsWebP() {
		return int(needle.SizeOriginal) + 1 + int(size.Base())
	}
	return int(size)
}

// readBuf is a pooled read buffer. Close puts it back into its pool; the
// fasthttp path hands it to the request so that it is closed once the
// answer has been written from it.
type readBuf struct {
	b    []byte
	pool *sync.Pool
	// ref holds the volume file's mapping while an answer is written
	// from it (fast path); send is that answer's sendfile body.
	ref  volume.Ref
	send sendBody
}

// keep takes buf, which a read returned in place of rb.b, when it grew.
func (rb *readBuf) keep(buf []byte) {
	if cap(buf) > cap(rb.b) && cap(buf) <= maxPooledBuffer {
		rb.b = buf[:0]
	}
}

// StillVerified reports whether the bytes of rb's answer are still those
// verified (see volume.Ref.StillVerified): always for bytes in memory. It
// is the event loops' proof before a later send of a mapped needle
// (evloop.Answer.Verified), with no allocation per answer.
func (rb *readBuf) StillVerified() bool { return rb.ref.StillVerified() }

// Close releases the mapping rb's answer was written from, if any, and
// returns rb to its pool.
func (rb *readBuf) Close() error {
	rb.ref.Release()
	rb.send = sendBody{}
	rb.pool.Put(rb)
	return nil
}

// httpHandler serves the store's HTTP surface: images under /p/, /healthz,
// /readyz and /metrics. It is safe for concurrent use.
type httpHandler struct {
	srv     *Server
	metrics http.Handler
	pools   [numSizePools]sync.Pool // of *readBuf
}

func newHTTPHandler(srv *Server) *httpHandler {
	h := &httpHandler{srv: srv}
	h.metrics = promhttp.HandlerFor(srv.metrics.registry, promhttp.HandlerOpts{Registry: srv.metrics.registry})
	for i := range h.pools {
		pool := &h.pools[i]
		pool.New = func() any { return &readBuf{pool: pool} }
	}
	return h
}

// ServeHTTP implements http.Handler.
func (h *httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, needle.ImagePathPrefix) {
		start := time.Now()
		code := h.serveImage(w, r)
		h.srv.metrics.countStatus(code)
		h.srv.metrics.latency.Observe(time.Since(start).Seconds())
		return
	}
	switch r.URL.Path {
	case "/healthz":
		imagehttp.WriteJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	case "/readyz":
		st := h.srv.store
		switch {
		case h.srv.draining():
			imagehttp.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "shutting down"})
		case !st.Ready():
			imagehttp.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "volumes still loading"})
		default:
			imagehttp.WriteJSON(w, http.StatusOK, map[string]any{
				"status": "ready", "volumes": len(st.Volumes()), "failed_volumes": len(st.Failed()),
			})
		}
	case "/metrics":
		h.metrics.ServeHTTP(w, r)
	default:
		imagehttp.NoRoute(w)
	}
}

// serveImage answers GET and HEAD /p/<photo ID>/<size>[.<ext>] and returns
// the status it answered with. Public: anyone may call it (browsers, CDNs,
// caches). The needle is chosen by imagehttp.Choose: ".webp" names the WebP
// variant, a bare size follows the Accept header with "Vary: Accept".
func (h *httpHandler) serveImage(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return imagehttp.MethodNotAllowed(w, "GET, HEAD")
	}
	id, size, ext, err := needle.ParseImagePath(r.URL.Path)
	if err != nil {
		return imagehttp.BadPath(w, err)
	}
	choice := imagehttp.Choose(r.Header, size, ext)
	choice.SetVary(w)
	size = choice.Size
	v, err := h.srv.store.Volume(id.Vid)
	var ev *volume.ECVolume
	if errors.Is(err, ErrVolumeNotHere) {
		ev, err = h.srv.store.ECVolume(id.Vid)
	}
	if err != nil {
		if errors.Is(err, ErrVolumeNotHere) {
			return imagehttp.Failure(w, http.StatusNotFound, ErrorVolumeNotHere, bodyNotHere)
		}
		return imagehttp.Failure(w, http.StatusServiceUnavailable, ErrorVolumeUnavailable, bodyUnavailable)
	}

	rb := h.pools[sizePool(size)].Get().(*readBuf)
	read := func(size needle.SizeCode) (needle.Needle, []byte, error) {
		if ev != nil {
			return ev.Read(r.Context(), id.Key, id.Cookie, size, rb.b)
		}
		return v.Read(id.Key, id.Cookie, size, rb.b)
	}
	n, buf, err := read(size)
	if errors.Is(err, volume.ErrNotFound) && choice.Fallback != size {
		// A photo stored without its WebP variant: serve the size itself.
		rb.keep(buf)
		size = choice.Fallback
		n, buf, err = read(size)
	}
	code := h.answerRead(w, r, id, size, n, err)
	rb.keep(buf)
	rb.Close()
	return code
}

// answerRead writes the answer to a read that returned n and err.
func (h *httpHandler) answerRead(w http.ResponseWriter, r *http.Request, id needle.PhotoID, size needle.SizeCode, n needle.Needle, err error) int {
	switch {
	case err == nil:
	case errors.Is(err, volume.ErrNotFound):
		return imagehttp.NotFound(w)
	case volume.IsCorruption(err):
		h.srv.reportCorrupt(id.Vid, id.Key, size, err)
		return imagehttp.Failure(w, http.StatusInternalServerError, ErrorCorrupt, bodyCorrupt)
	case errors.Is(err, volume.ErrClosed):
		return imagehttp.Failure(w, http.StatusServiceUnavailable, ErrorVolumeUnavailable, bodyUnavailable)
	case errors.Is(err, volume.ErrUnrecoverable):
		// Too few shards of an EC volume answer now; another holder or a
		// rebuild may serve it later.
		h.srv.opts.Logger.Warn("EC read unrecoverable", "vid", id.Vid, "key", id.Key, "size", size.String(), "err", err)
		return imagehttp.Failure(w, http.StatusServiceUnavailable, ErrorVolumeUnavailable, bodyUnavailable)
	default:
		h.srv.opts.Logger.Error("image read failed", "vid", id.Vid, "key", id.Key, "size", size.String(), "err", err)
		return imagehttp.Failure(w, http.StatusInternalServerError, ErrorRead, bodyReadError)
	}

	var etagBuf [18]byte
	etag := imagehttp.AppendETag(etagBuf[:0], n.Checksum)
	modTime := time.Unix(0, n.AppendTime).UTC().Truncate(time.Second)
	var lmBuf [len(http.TimeFormat) + 4]byte
	lastMod := modTime.AppendFormat(lmBuf[:0], http.TimeFormat)
	im := imagehttp.Image{
		Data:         n.Data,
		ContentType:  hdrMIME[n.ContentType],
		ETag:         string(etag),
		LastModified: string(lastMod),
		ModTime:      modTime,
	}
	code, written := imagehttp.Serve(w, r, &im)
	if written > 0 {
		h.srv.metrics.bytesServed.Add(float64(written))
	}
	return code
}

// The store's range and entity-tag tests exercise the shared parsers
// through these names.
type rangeResult = imagehttp.RangeResult

const (
	rangeIgnore        = imagehttp.RangeIgnore
	rangeOne           = imagehttp.RangeOne
	rangeUnsatisfiable = imagehttp.RangeUnsatisfiable
	rangeInvalid       = imagehttp.RangeInvalid
)

func parseRange(s string, size int64) (start, end int64, res rangeResult) {
	return imagehttp.ParseRange(s, size)
}

func etagListMatch(values []string, etag []byte, weak bool) bool {
	return imagehttp.ETagListMatch(values, string(etag), weak)
}

func ifRangeHolds(values []string, etag []byte, modTime time.Time) bool {
	return imagehttp.IfRangeHolds(values, string(etag), modTime)
}
