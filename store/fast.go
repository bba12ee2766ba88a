package store

import (
	"context"
	"errors"
	"net/http"
	"syscall"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"

	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/internal/serve"
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
// answered here with no allocation (but, for an answer sent with sendfile,
// the connection's raw handle; and a read buffer while the pools learn the
// sizes of the images served, see http.go). With the store's verified
// mappings (the default), a needle of a plain volume of volume.PinMin
// bytes or more that is all in the page cache is verified where it lies,
// through a verified mapping of its own (volume.ReadRef; a needle
// verified before whose pages have not left memory since is not hashed
// again, see volume.Pins): an image of sendfileMin bytes or more leaves
// with one write of the headers and sendfile(2) from the volume file,
// never copied into the process, its pages proven still verified before
// the first sendfile call and after every wait for the socket (sendBody);
// a smaller one (or one on a connection that cannot sendfile) is copied
// out of the mapping into a pooled buffer at once, unhashed, while its
// verified mapping proves it (copyOut), and written from there with the
// headers. Any other needle (smaller, not resident, of an EC volume, or
// of a store without verified mappings) is read with one pread and
// verified into a pooled buffer (of the needle's length rounded up to
// volume.ReadBufferClass), and fasthttp writes the headers and that
// buffer in one write, or one writev for an image larger than its write
// buffer. The request holds the
// mapping (or the buffer) until its answer is written. Everything else,
// which is every request with a conditional or Range header, any path
// that is not a plain /p/ path, and /healthz,
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

// sendfileMin is the smallest image the fast path sends with sendfile(2)
// from the volume file; smaller ones are copied with the headers into one
// write, which costs less than a second system call and a packet of
// headers of their own (see bench/RESULTS.md, "Store GET").
const sendfileMin = 64 << 10

// readBufKey is the request user value under which a read buffer waits
// for the answer written from it.
type readBufKey struct{}

// imageRequest is what the fast paths ask of a request: fasthttp's
// (fastRequest) and the event loops' (loopRequest).
type imageRequest interface {
	getOrHead() bool
	target() []byte
	has(name string) bool
	acceptsWebP() bool
}

// plainImage reports whether r is a plain image GET or HEAD, which the
// fast paths answer, and which image it asks for. Every other request
// (another method or path, a target net/http would clean, a conditional
// or Range header, a path that does not parse) is declined, for the
// net/http handler.
func plainImage[R imageRequest](r R) (id needle.PhotoID, choice imagehttp.Choice, ok bool) {
	if !r.getOrHead() {
		return id, choice, false
	}
	uri := r.target()
	if !imagehttp.PlainTarget(uri) {
		return id, choice, false
	}
	for _, name := range imagehttp.ConditionalHeaders {
		if r.has(name) {
			return id, choice, false
		}
	}
	// The string (and ext, a part of it) only lives for the call: the
	// request's bytes, not a copy, so that a GET allocates nothing.
	id, size, ext, err := needle.ParseImagePath(unsafe.String(unsafe.SliceData(uri), len(uri)))
	if err != nil {
		return id, choice, false // the 400 answer names the error; net/http writes it
	}
	choice = imagehttp.Choose(nil, size, ext)
	if choice.Vary && r.acceptsWebP() {
		// A bare size, chosen by Accept: its WebP variant when the
		// request accepts WebP (the size itself when the photo has none),
		// as imagehttp.Choose does for net/http.
		choice.Size, _ = size.WebP()
	}
	return id, choice, true
}

// acceptValueWebP is imagehttp.AcceptValueWebP of a header value's bytes.
func acceptValueWebP(v []byte) bool {
	// The string only lives for the call.
	return imagehttp.AcceptValueWebP(unsafe.String(unsafe.SliceData(v), len(v)))
}

// fastRequest is a fasthttp request as plainImage sees it.
type fastRequest struct{ ctx *fasthttp.RequestCtx }

func (r fastRequest) getOrHead() bool      { return r.ctx.IsGet() || r.ctx.IsHead() }
func (r fastRequest) target() []byte       { return r.ctx.Request.Header.RequestURI() }
func (r fastRequest) has(name string) bool { return r.ctx.Request.Header.Peek(name) != nil }
func (r fastRequest) acceptsWebP() bool {
	for _, v := range r.ctx.Request.Header.PeekAll("Accept") {
		if acceptValueWebP(v) {
			return true
		}
	}
	return false
}

// serveFast answers a plain GET or HEAD of an image and reports whether it
// did; it declines every other request. Callers: the store's HTTP server
// (internal/serve) for every request; the images are public, as on the
// net/http path.
func (h *httpHandler) serveFast(ctx *fasthttp.RequestCtx) bool {
	id, choice, ok := plainImage(fastRequest{ctx})
	if !ok {
		return false
	}
	start := time.Now()
	img := h.readImage(id, choice, true, false)
	var rc syscall.RawConn
	if img.code == http.StatusOK && img.rb.ref.Mapped() && !ctx.IsHead() {
		// fasthttp writes the body after this returns. A large image
		// goes with sendfile, proven before every send (sendBody); any
		// other mapped image is copied out of the mapping now, while its
		// verified mapping proves it, and written from memory.
		if len(img.n.Data) >= sendfileMin {
			rc = serve.RawTCP(ctx.Conn())
		}
		if rc == nil {
			img = h.copyOut(img, id, choice)
		}
	}
	if img.code == declined {
		return false
	}
	h.writeFast(ctx, &img, rc)
	if choice.Vary {
		// On every answer, failures included, as on the net/http path.
		ctx.Response.Header.SetCanonical(imagehttp.RawVary, imagehttp.RawAccept)
	}
	h.srv.metrics.countStatus(img.code)
	h.srv.metrics.latency.Observe(time.Since(start).Seconds())
	return true
}

// Outcomes of readImage that are not a status: a read it leaves to the
// net/http path, which answers it in full, and one it would have to wait
// for the disk for, when it may not.
const (
	declined = -1
	blocked  = -2
)

// imageRead is what readImage found: a status and what the answer is
// made of, which each fast path writes as the net/http path would.
type imageRead struct {
	code int
	// An image (code 200): the verified needle, and the buffer or mapping
	// its bytes lie in, which must be closed once they are written.
	n  needle.Needle
	rb *readBuf
	// An error answer: its X-Haybale-Error (none for the 404 of a
	// missing image, which is cached a little) and its JSON body.
	reason string
	body   []byte
}

// readImage reads and verifies one image, as serveImage and answerRead
// do on the net/http path, from a plain or an EC volume. A needle whose
// content type is not an image type is declined: the net/http path
// answers it as corrupt, never as an image. With mayBlock false it reads
// only what it can without waiting for the disk (or for the peers of an
// EC volume), and answers blocked otherwise, having read nothing. With
// refused, the caller's read of the image without waiting was just
// refused (see serveLoop): a needle that must wait for the disk then
// waits at once (volume.ReadRefCold).
func (h *httpHandler) readImage(id needle.PhotoID, choice imagehttp.Choice, mayBlock, refused bool) imageRead {
	size := choice.Size
	v, err := h.srv.store.Volume(id.Vid)
	var ev *volume.ECVolume
	if errors.Is(err, ErrVolumeNotHere) {
		ev, err = h.srv.store.ECVolume(id.Vid)
	}
	if err != nil {
		if errors.Is(err, ErrVolumeNotHere) {
			return imageRead{code: http.StatusNotFound, reason: ErrorVolumeNotHere, body: bodyNotHere}
		}
		return imageRead{code: http.StatusServiceUnavailable, reason: ErrorVolumeUnavailable, body: bodyUnavailable}
	}
	if ev != nil && !mayBlock {
		return imageRead{code: blocked}
	}
	rb := h.pools[sizePool(size)].Get().(*readBuf)
	var n needle.Needle
	read := func(size needle.SizeCode) error {
		var buf []byte
		var err error
		switch {
		case ev != nil:
			// Not a request's context: a fasthttp RequestCtx is reused
			// once the handler returns, and a context derived from it
			// would outlive it. A degraded read is bounded as a net/http
			// answer is.
			rctx, cancel := context.WithTimeout(context.Background(), h.srv.opts.WriteTimeout)
			n, buf, err = ev.Read(rctx, id.Key, id.Cookie, size, rb.b)
			cancel()
		case mayBlock && refused:
			rb.ref, buf, err = v.ReadRefCold(id.Key, id.Cookie, size, rb.b)
			n = rb.ref.Needle
		case mayBlock:
			// From the page cache without a copy when the needle is
			// resident (rb then holds the mapping until the answer is
			// written), or with one pread into rb.
			rb.ref, buf, err = v.ReadRef(id.Key, id.Cookie, size, rb.b)
			n = rb.ref.Needle
		default:
			rb.ref, buf, err = v.TryReadRef(id.Key, id.Cookie, size, rb.b)
			n = rb.ref.Needle
		}
		rb.keep(buf)
		return err
	}
	err = read(size)
	if errors.Is(err, volume.ErrNotFound) && choice.Fallback != size {
		// A photo stored without its WebP variant: serve the size itself.
		size = choice.Fallback
		err = read(size)
	}
	return h.readResult(id, size, n, rb, err)
}

// readResult turns a read of the image id at size (the needle n in rb, or
// err) into readImage's answer; rb is closed unless the answer is the
// image's.
func (h *httpHandler) readResult(id needle.PhotoID, size needle.SizeCode, n needle.Needle, rb *readBuf, err error) imageRead {
	if err != nil {
		rb.Close()
	}
	switch {
	case err == nil:
		if mimeBytes[n.ContentType] == nil || !imagehttp.IsImageContentType(hdrMIME[n.ContentType][0]) {
			rb.Close()
			return imageRead{code: declined}
		}
		return imageRead{code: http.StatusOK, n: n, rb: rb}
	case errors.Is(err, volume.ErrWouldBlock):
		return imageRead{code: blocked}
	case errors.Is(err, volume.ErrNotFound):
		return imageRead{code: http.StatusNotFound, body: bodyNotFound}
	case volume.IsCorruption(err):
		h.srv.reportCorrupt(id.Vid, id.Key, size, err)
		return imageRead{code: http.StatusInternalServerError, reason: ErrorCorrupt, body: bodyCorrupt}
	case errors.Is(err, volume.ErrClosed):
		return imageRead{code: http.StatusServiceUnavailable, reason: ErrorVolumeUnavailable, body: bodyUnavailable}
	case errors.Is(err, volume.ErrUnrecoverable):
		// Too few shards of an EC volume answer now; another holder or a
		// rebuild may serve it later.
		h.srv.opts.Logger.Warn("EC read unrecoverable", "vid", id.Vid, "key", id.Key, "size", size.String(), "err", err)
		return imageRead{code: http.StatusServiceUnavailable, reason: ErrorVolumeUnavailable, body: bodyUnavailable}
	default:
		h.srv.opts.Logger.Error("image read failed", "vid", id.Vid, "key", id.Key, "size", size.String(), "err", err)
		return imageRead{code: http.StatusInternalServerError, reason: ErrorRead, body: bodyReadError}
	}
}

// copyOut copies the bytes of img, a mapped needle, out of the volume's
// mapping into its read buffer (volume.Ref.CopyOut: no hash, its verified
// mapping proves them), so that fasthttp, which writes the body through
// its buffered writer after the handler returns (waiting for the socket
// in between, where the pages may leave the page cache), writes them from
// memory. The copy costs less than proving the bytes before each of
// fasthttp's writes would (a body stream of its own: the headers apart
// from the body, and the body in pieces of its write buffer), and keeps
// the headers and body in one write. When the pages are no longer those
// verified (they left the page cache after the read, before or while
// they were copied: a matter of microseconds), or copying faults, the
// image is read once more (verified again, or read with a pread); a
// second failure answers a read error.
func (h *httpHandler) copyOut(img imageRead, id needle.PhotoID, choice imagehttp.Choice) imageRead {
	for try := 0; ; try++ {
		buf, err := img.rb.ref.CopyOut(img.rb.b)
		img.rb.keep(buf)
		if err == nil {
			img.n.Data = img.rb.ref.Needle.Data
			return img
		}
		img.rb.Close()
		if try == 1 {
			h.srv.opts.Logger.Error("image read failed", "vid", id.Vid, "key", id.Key, "size", img.n.Size.String(), "err", err)
			return imageRead{code: http.StatusInternalServerError, reason: ErrorRead, body: bodyReadError}
		}
		if img = h.readImage(id, choice, true, false); img.code != http.StatusOK || !img.rb.ref.Mapped() {
			return img
		}
	}
}

// writeFast writes img's answer into a fasthttp response; rc, when not
// nil, is the connection's raw handle, through which a mapped image of
// sendfileMin bytes or more is sent with sendfile.
func (h *httpHandler) writeFast(ctx *fasthttp.RequestCtx, img *imageRead, rc syscall.RawConn) {
	if img.code != http.StatusOK {
		if img.reason != "" {
			ctx.Response.Header.SetCanonical(imagehttp.RawCacheControl, valNoStore)
			ctx.Response.Header.SetCanonical(imagehttp.RawErrorHeaderName, valErrors[img.reason])
		} else {
			ctx.Response.Header.SetCanonical(imagehttp.RawCacheControl, imagehttp.RawCacheNotFound)
		}
		ctx.Response.Header.SetContentTypeBytes(imagehttp.RawJSONContentType)
		ctx.Response.Header.SetCanonical(imagehttp.RawNoSniffName, imagehttp.RawNoSniff)
		ctx.SetStatusCode(img.code)
		ctx.Response.SetBodyRaw(img.body)
		return
	}
	n, rb := &img.n, img.rb
	var tagBuf [18]byte
	var lmBuf [len(http.TimeFormat) + 4]byte
	hdr := &ctx.Response.Header
	hdr.SetCanonical(imagehttp.RawETag, imagehttp.AppendETag(tagBuf[:0], n.Checksum))
	hdr.SetCanonical(imagehttp.RawLastModified, appendLastModified(lmBuf[:0], n))
	hdr.SetCanonical(imagehttp.RawCacheControl, imagehttp.RawImmutable)
	hdr.SetCanonical(imagehttp.RawAcceptRanges, imagehttp.RawBytes)
	hdr.SetCanonical(imagehttp.RawNoSniffName, imagehttp.RawNoSniff)
	hdr.SetContentTypeBytes(mimeBytes[n.ContentType])
	// The body is written after this returns, from the pooled buffer or
	// the volume file; the request closes rb (releasing the file's mapping
	// and returning rb to its pool) when it is reset for the next request
	// on the connection, or released.
	ctx.SetUserValue(readBufKey{}, rb)
	if fd, off, ok := rb.ref.Source(); ok && rc != nil {
		rb.send = sendBody{conn: rc, fd: fd, off: off, n: int64(len(n.Data)), ref: &rb.ref, cut: &h.srv.metrics.unverifiedFast}
		ctx.Response.ImmediateHeaderFlush = true
		ctx.Response.SetBodyStream(&rb.send, len(n.Data))
		h.srv.metrics.bytesServed.Add(float64(len(n.Data)))
		h.srv.metrics.bytesSent.Add(float64(len(n.Data)))
		return
	}
	// Headers and body leave in one write (or one writev when the body
	// is larger than the connection's write buffer), from memory (the
	// mapping only for a HEAD, whose body is never written).
	ctx.Response.SetBodyRaw(n.Data)
	if !ctx.IsHead() {
		h.srv.metrics.bytesServed.Add(float64(len(n.Data)))
	}
}

// appendLastModified appends n's Last-Modified value: its append time,
// to the second, in http.TimeFormat ("Mon, 02 Jan 2006 15:04:05 GMT").
// Every image answer carries one, so it is written by hand from the
// civil date of the Unix day rather than by time.Time.AppendFormat, which
// walks the layout string and cost about a hundred nanoseconds per answer
// (see bench/RESULTS.md, "Store GET"); a year out of 0001-9999, which no
// needle written by a store has, is left to AppendFormat.
func appendLastModified(b []byte, n *needle.Needle) []byte {
	sec := n.AppendTime / int64(time.Second)
	if n.AppendTime < 0 && n.AppendTime%int64(time.Second) != 0 {
		sec-- // the second that holds it, as Truncate does after 1970
	}
	days, rem := sec/86400, sec%86400
	if rem < 0 {
		days, rem = days-1, rem+86400
	}
	y, m, d := civilDate(days)
	if y < 1 || y > 9999 {
		return time.Unix(0, n.AppendTime).UTC().Truncate(time.Second).AppendFormat(b, http.TimeFormat)
	}
	wd := (days%7 + 11) % 7 // 1970-01-01 was a Thursday (4)
	b = append(b, weekdayNames[wd*3:wd*3+3]...)
	b = append(b, ',', ' ', byte('0'+d/10), byte('0'+d%10), ' ')
	b = append(b, monthNames[(m-1)*3:(m-1)*3+3]...)
	b = append(b, ' ', byte('0'+y/1000), byte('0'+y/100%10), byte('0'+y/10%10), byte('0'+y%10), ' ')
	h, mi, s := rem/3600, rem/60%60, rem%60
	return append(b, byte('0'+h/10), byte('0'+h%10), ':', byte('0'+mi/10), byte('0'+mi%10), ':',
		byte('0'+s/10), byte('0'+s%10), ' ', 'G', 'M', 'T')
}

const (
	weekdayNames = "SunMonTueWedThuFriSat"
	monthNames   = "JanFebMarAprMayJunJulAugSepOctNovDec"
)

// civilDate returns the proleptic Gregorian year, month (1-12) and day
// (1-31) of the day days after 1970-01-01 (H. Hinnant's days_from_civil,
// inverted).
func civilDate(days int64) (year, month, day int64) {
	z := days + 719468
	era := z / 146097
	if z < 0 && z%146097 != 0 {
		era--
	}
	doe := z - era*146097                                  // [0, 146096]
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365 // [0, 399]
	doy := doe - (365*yoe + yoe/4 - yoe/100)               // [0, 365]
	mp := (5*doy + 2) / 153                                // [0, 11], from March
	day = doy - (153*mp+2)/5 + 1
	month = mp + 3
	if month > 12 {
		month -= 12
	}
	year = yoe + era*400
	if month <= 2 {
		year++
	}
	return year, month, day
}
