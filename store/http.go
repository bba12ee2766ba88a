package store

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// Values of the X-Haybale-Error header, which tell a cache or CDN why an
// image was not served.
const (
	// ErrorHeader names the header.
	ErrorHeader = "X-Haybale-Error"
	// ErrorVolumeNotHere: this store does not hold the photo's volume; ask
	// the directory for a replica.
	ErrorVolumeNotHere = "volume-not-here"
	// ErrorVolumeUnavailable: the store holds the volume but cannot serve
	// it (it failed to open, or the store is shutting down); try a replica.
	ErrorVolumeUnavailable = "volume-unavailable"
	// ErrorCorrupt: the stored bytes failed verification; try a replica.
	ErrorCorrupt = "corrupt"
	// ErrorRead: the disk failed to read the bytes; try a replica.
	ErrorRead = "read-error"
)

// Header values shared by every response. net/http only reads header
// value slices, and each has len == cap, so an append by anyone else
// copies rather than writes into them.
var (
	hdrImmutable    = []string{"public, max-age=31536000, immutable"}
	hdrNotFoundTTL  = []string{"public, max-age=60"}
	hdrNoStore      = []string{"no-store"}
	hdrAcceptRanges = []string{"bytes"}
	hdrJSON         = []string{"application/json"}
	hdrNoSniff      = []string{"nosniff"}
	hdrAllow        = []string{"GET, HEAD"}
	hdrMIME         = func() [256][]string {
		var t [256][]string
		for i := range t {
			t[i] = []string{needle.ContentType(i).MIME()}
		}
		return t
	}()
)

// Static JSON bodies of the common error answers.
var (
	bodyNotFound    = []byte(`{"error":"image not found"}` + "\n")
	bodyNoRoute     = []byte(`{"error":"no such path"}` + "\n")
	bodyNotHere     = []byte(`{"error":"volume not on this store"}` + "\n")
	bodyUnavailable = []byte(`{"error":"volume unavailable"}` + "\n")
	bodyCorrupt     = []byte(`{"error":"stored image failed verification"}` + "\n")
	bodyReadError   = []byte(`{"error":"stored image could not be read"}` + "\n")
	bodyMethod      = []byte(`{"error":"method not allowed; use GET or HEAD"}` + "\n")
	bodyRange       = []byte(`{"error":"range not satisfiable"}` + "\n")
	bodyPrecond     = []byte(`{"error":"precondition failed"}` + "\n")
)

// Buffer pooling. Reads go into buffers pooled per size code: the sizes of
// one code are alike (thumbnails are small, large images are large), so a
// pool's buffers soon fit its images and a GET allocates no buffer. A read
// that outgrows the pooled buffer gets a new one from the volume, which
// then replaces the small one in the pool.
const (
	maxPooledBuffer = 8 << 20 // larger buffers are left to the GC
	numSizePools    = int(needle.SizeOriginal) + 1
)

var initialBufferSize = [numSizePools]int{8 << 10, 64 << 10, 256 << 10, 1 << 20, 1 << 20}

// httpHandler serves the store's HTTP surface: images under /p/, /healthz,
// /readyz and /metrics. It is safe for concurrent use.
type httpHandler struct {
	srv     *Server
	metrics http.Handler
	pools   [numSizePools]sync.Pool // of *[]byte
}

func newHTTPHandler(srv *Server) *httpHandler {
	h := &httpHandler{srv: srv}
	h.metrics = promhttp.HandlerFor(srv.metrics.registry, promhttp.HandlerOpts{Registry: srv.metrics.registry})
	for i := range h.pools {
		size := initialBufferSize[i]
		h.pools[i].New = func() any {
			b := make([]byte, 0, size)
			return &b
		}
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
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	case "/readyz":
		st := h.srv.store
		switch {
		case h.srv.draining.Load():
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "shutting down"})
		case !st.Ready():
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "volumes still loading"})
		default:
			writeJSON(w, http.StatusOK, map[string]any{
				"status": "ready", "volumes": len(st.Volumes()), "failed_volumes": len(st.Failed()),
			})
		}
	case "/metrics":
		h.metrics.ServeHTTP(w, r)
	default:
		writeStatic(w, http.StatusNotFound, bodyNoRoute)
	}
}

// serveImage answers GET and HEAD /p/<photo ID>/<size>[.<ext>] and returns
// the status it answered with.
func (h *httpHandler) serveImage(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header()["Allow"] = hdrAllow
		return writeStatic(w, http.StatusMethodNotAllowed, bodyMethod)
	}
	id, size, _, err := needle.ParseImagePath(r.URL.Path)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()})
		return http.StatusBadRequest
	}
	v, err := h.srv.store.Volume(id.Vid)
	if err != nil {
		w.Header()["Cache-Control"] = hdrNoStore
		if errors.Is(err, ErrVolumeNotHere) {
			w.Header()[ErrorHeader] = []string{ErrorVolumeNotHere}
			return writeStatic(w, http.StatusNotFound, bodyNotHere)
		}
		w.Header()[ErrorHeader] = []string{ErrorVolumeUnavailable}
		return writeStatic(w, http.StatusServiceUnavailable, bodyUnavailable)
	}

	pool := &h.pools[size]
	bufp := pool.Get().(*[]byte)
	n, buf, err := v.Read(id.Key, id.Cookie, size, *bufp)
	code := h.answerRead(w, r, id, size, n, err)
	if cap(buf) > cap(*bufp) && cap(buf) <= maxPooledBuffer {
		*bufp = buf[:0]
	}
	pool.Put(bufp)
	return code
}

// answerRead writes the answer to a read that returned n and err.
func (h *httpHandler) answerRead(w http.ResponseWriter, r *http.Request, id needle.PhotoID, size needle.SizeCode, n needle.Needle, err error) int {
	hdr := w.Header()
	switch {
	case err == nil:
	case errors.Is(err, volume.ErrNotFound):
		hdr["Cache-Control"] = hdrNotFoundTTL
		return writeStatic(w, http.StatusNotFound, bodyNotFound)
	case volume.IsCorruption(err):
		h.srv.reportCorrupt(id.Vid, id.Key, size, err)
		hdr["Cache-Control"] = hdrNoStore
		hdr[ErrorHeader] = []string{ErrorCorrupt}
		return writeStatic(w, http.StatusInternalServerError, bodyCorrupt)
	case errors.Is(err, volume.ErrClosed):
		hdr["Cache-Control"] = hdrNoStore
		hdr[ErrorHeader] = []string{ErrorVolumeUnavailable}
		return writeStatic(w, http.StatusServiceUnavailable, bodyUnavailable)
	default:
		h.srv.opts.Logger.Error("image read failed", "vid", id.Vid, "key", id.Key, "size", size.String(), "err", err)
		hdr["Cache-Control"] = hdrNoStore
		hdr[ErrorHeader] = []string{ErrorRead}
		return writeStatic(w, http.StatusInternalServerError, bodyReadError)
	}

	var etagBuf [18]byte
	etag := appendETag(etagBuf[:0], n.Checksum)
	modTime := time.Unix(0, n.AppendTime).UTC().Truncate(time.Second)
	var lmBuf [len(http.TimeFormat) + 4]byte
	lastMod := modTime.AppendFormat(lmBuf[:0], http.TimeFormat)

	// One allocation holds every per-response header value.
	vals := make([]string, 4)
	vals[0], vals[1] = string(etag), string(lastMod)
	hdr["Etag"] = vals[0:1:1]
	hdr["Last-Modified"] = vals[1:2:2]
	hdr["Cache-Control"] = hdrImmutable

	// Preconditions, in the order of RFC 9110 section 13.2.2.
	if im := r.Header["If-Match"]; len(im) > 0 {
		if !etagListMatch(im, etag, false) {
			return writeStatic(w, http.StatusPreconditionFailed, bodyPrecond)
		}
	} else if ius := r.Header["If-Unmodified-Since"]; len(ius) > 0 {
		if t, err := http.ParseTime(ius[0]); err == nil && modTime.After(t) {
			return writeStatic(w, http.StatusPreconditionFailed, bodyPrecond)
		}
	}
	if inm := r.Header["If-None-Match"]; len(inm) > 0 {
		if etagListMatch(inm, etag, true) {
			w.WriteHeader(http.StatusNotModified)
			return http.StatusNotModified
		}
	} else if ims := r.Header["If-Modified-Since"]; len(ims) > 0 {
		if t, err := http.ParseTime(ims[0]); err == nil && !modTime.After(t) {
			w.WriteHeader(http.StatusNotModified)
			return http.StatusNotModified
		}
	}

	hdr["Content-Type"] = hdrMIME[n.ContentType]
	hdr["Accept-Ranges"] = hdrAcceptRanges
	body := n.Data
	code := http.StatusOK
	if rng := r.Header["Range"]; len(rng) == 1 && ifRangeHolds(r.Header["If-Range"], etag, modTime) {
		start, end, res := parseRange(rng[0], int64(len(body)))
		switch res {
		case rangeOne:
			vals[2] = "bytes " + strconv.FormatInt(start, 10) + "-" + strconv.FormatInt(end-1, 10) + "/" + strconv.Itoa(len(body))
			hdr["Content-Range"] = vals[2:3:3]
			body = body[start:end]
			code = http.StatusPartialContent
		case rangeUnsatisfiable, rangeInvalid:
			if res == rangeUnsatisfiable {
				vals[2] = "bytes */" + strconv.Itoa(len(body))
				hdr["Content-Range"] = vals[2:3:3]
			}
			delete(hdr, "Cache-Control")
			delete(hdr, "Accept-Ranges")
			return writeStatic(w, http.StatusRequestedRangeNotSatisfiable, bodyRange)
		}
	}
	vals[3] = strconv.Itoa(len(body))
	hdr["Content-Length"] = vals[3:4:4]
	w.WriteHeader(code)
	if r.Method == http.MethodGet {
		if written, _ := w.Write(body); written > 0 {
			h.srv.metrics.bytesServed.Add(float64(written))
		}
	}
	return code
}

// appendETag appends the checksum as a quoted, zero-padded, 16-digit
// lower-case hex entity tag.
func appendETag(dst []byte, sum uint64) []byte {
	const digits = "0123456789abcdef"
	dst = append(dst, '"')
	for shift := 60; shift >= 0; shift -= 4 {
		dst = append(dst, digits[(sum>>uint(shift))&0xf])
	}
	return append(dst, '"')
}

// etagListMatch reports whether a list of entity tags (the values of an
// If-Match or If-None-Match header) holds etag, or "*". weak selects the
// weak comparison of If-None-Match; If-Match compares strongly, so a W/
// tag never matches.
func etagListMatch(values []string, etag []byte, weak bool) bool {
	for _, list := range values {
		for list != "" {
			list = strings.TrimLeft(list, " \t,")
			if list == "" {
				break
			}
			if list[0] == '*' {
				return true
			}
			isWeak := false
			if strings.HasPrefix(list, "W/") {
				isWeak, list = true, list[2:]
			}
			tag, rest, ok := scanETag(list)
			if !ok {
				// Malformed: skip to the next element.
				if i := strings.IndexByte(list, ','); i >= 0 {
					list = list[i+1:]
					continue
				}
				break
			}
			if (weak || !isWeak) && tag == string(etag) {
				return true
			}
			list = rest
		}
	}
	return false
}

// scanETag splits a quoted entity tag off the front of s.
func scanETag(s string) (tag, rest string, ok bool) {
	if len(s) < 2 || s[0] != '"' {
		return "", s, false
	}
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			return s[:i+1], s[i+1:], true
		case c == 0x21 || (c >= 0x23 && c <= 0x7E) || c >= 0x80:
		default:
			return "", s, false
		}
	}
	return "", s, false
}

// ifRangeHolds reports whether a Range request should be honoured given
// its If-Range header: absent, a strongly matching entity tag, or exactly
// the Last-Modified date.
func ifRangeHolds(values []string, etag []byte, modTime time.Time) bool {
	if len(values) == 0 {
		return true
	}
	if len(values) > 1 {
		return false
	}
	v := strings.TrimSpace(values[0])
	if strings.HasPrefix(v, `"`) {
		tag, rest, ok := scanETag(v)
		return ok && rest == "" && tag == string(etag)
	}
	if strings.HasPrefix(v, "W/") {
		return false
	}
	t, err := http.ParseTime(v)
	return err == nil && t.Equal(modTime)
}

// rangeResult classifies a Range header.
type rangeResult int

const (
	// rangeIgnore: serve the whole body (no usable range, another unit,
	// or several ranges, which the store answers with the whole body).
	rangeIgnore rangeResult = iota
	// rangeOne: serve body[start:end].
	rangeOne
	// rangeUnsatisfiable: answer 416 with the body's length.
	rangeUnsatisfiable
	// rangeInvalid: a malformed byte range; answer 416.
	rangeInvalid
)

// maxRangeHeader bounds the Range header the store parses; longer ones
// (only ever many ranges) are answered with the whole body.
const maxRangeHeader = 1 << 10

// parseRange interprets a Range header for a body of size bytes, as
// RFC 9110 section 14 describes, for a single byte range. A syntactically
// invalid byte range set is unsatisfiable, as net/http's ServeContent
// answers it.
func parseRange(s string, size int64) (start, end int64, res rangeResult) {
	spec, ok := strings.CutPrefix(s, "bytes=")
	if !ok {
		if strings.Contains(s, "=") && !strings.HasPrefix(strings.TrimSpace(s), "bytes") {
			return 0, 0, rangeIgnore // another range unit
		}
		return 0, 0, rangeInvalid
	}
	if len(spec) > maxRangeHeader || strings.IndexByte(spec, ',') >= 0 {
		return 0, 0, rangeIgnore
	}
	spec = strings.TrimSpace(spec)
	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, rangeInvalid
	}
	first, last = strings.TrimSpace(first), strings.TrimSpace(last)
	if first == "" {
		// Suffix range: the last n bytes.
		n, ok := parseDigits(last)
		if !ok {
			return 0, 0, rangeInvalid
		}
		if n == 0 || size == 0 {
			return 0, 0, rangeUnsatisfiable
		}
		return size - min(n, size), size, rangeOne
	}
	a, ok := parseDigits(first)
	if !ok {
		return 0, 0, rangeInvalid
	}
	if last == "" {
		if a >= size {
			return 0, 0, rangeUnsatisfiable
		}
		return a, size, rangeOne
	}
	b, ok := parseDigits(last)
	if !ok || b < a {
		return 0, 0, rangeInvalid
	}
	if a >= size {
		return 0, 0, rangeUnsatisfiable
	}
	return a, min(b, size-1) + 1, rangeOne
}

// parseDigits parses a non-empty string of ASCII digits, saturating at
// the largest int64 rather than failing on overflow.
func parseDigits(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (1<<63-1-int64(c-'0'))/10 {
			n = 1<<63 - 1
			continue
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// writeStatic writes a fixed JSON error body and returns code.
func writeStatic(w http.ResponseWriter, code int, body []byte) int {
	h := w.Header()
	h["Content-Type"] = hdrJSON
	h["X-Content-Type-Options"] = hdrNoSniff
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(code)
	_, _ = w.Write(body)
	return code
}

// writeJSON writes v as a JSON body.
func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		body = []byte(`{"error":"internal error"}`)
		code = http.StatusInternalServerError
	}
	writeStatic(w, code, append(body, '\n'))
}
