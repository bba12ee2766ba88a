package gateway

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"time"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/resizer"
)

// UploadResponse is the answer of POST /photos (201 Created).
type UploadResponse struct {
	// ID is the photo ID.
	ID string `json:"id"`
	// Width and Height are those of the upright uploaded image.
	Width  int `json:"width"`
	Height int `json:"height"`
	// URLs maps each size letter (t, s, m, l) to the image URL (JPEG or
	// PNG).
	URLs map[string]string `json:"urls"`
	// WebPURLs maps each size letter to the URL of the size's WebP
	// variant; absent when the photo was stored without variants.
	WebPURLs map[string]string `json:"webp_urls,omitempty"`
	// Sizes describes each stored size, keyed by letter.
	Sizes map[string]SizeInfo `json:"sizes"`
	// Uploaded is when the gateway stored the photo.
	Uploaded time.Time `json:"uploaded"`
	// ThumbHash is the photo's ThumbHash placeholder, standard base64
	// (about 25 bytes before encoding), for the page to paint while the
	// images load. GET /photos/{id} gives the same value.
	ThumbHash string `json:"thumbhash"`
}

// SizeInfo describes one stored size of a photo.
type SizeInfo struct {
	Width       int    `json:"width"`
	Height      int    `json:"height"`
	ContentType string `json:"content_type"`
	Bytes       int    `json:"bytes"`
	// WebPBytes is the size of the WebP variant; absent without one.
	WebPBytes int `json:"webp_bytes,omitempty"`
}

// Upload outcomes, the label values of haybale_gateway_uploads_total.
const (
	outcomeCreated      = "created"
	outcomeUnauthorized = "unauthorized"
	outcomeBadRequest   = "bad_request"
	outcomeTooLarge     = "too_large"
	outcomeTooSlow      = "too_slow"
	outcomeForbidden    = "forbidden"
	outcomeUnsupported  = "unsupported"
	outcomeCorrupt      = "corrupt"
	outcomeUnavailable  = "unavailable"
	outcomeError        = "error"
)

var uploadOutcomes = []string{
	outcomeCreated, outcomeUnauthorized, outcomeForbidden, outcomeBadRequest, outcomeTooLarge, outcomeTooSlow,
	outcomeUnsupported, outcomeCorrupt, outcomeUnavailable, outcomeError,
}

// uploadError is a rejected upload: the status, outcome label and message
// of its answer.
type uploadError struct {
	status  int
	outcome string
	msg     string
	// unread says the body was not read to its end (always so for 408
	// and 413): the connection is closed rather than drained.
	unread bool
}

func (e *uploadError) Error() string { return e.msg }

func reject(status int, outcome, format string, args ...any) *uploadError {
	return &uploadError{status: status, outcome: outcome, msg: fmt.Sprintf(format, args...)}
}

func (g *Gateway) handleUpload(w http.ResponseWriter, r *http.Request) {
	if !g.originAllowed(w, r) {
		g.metrics.uploads[outcomeForbidden].Inc()
		return
	}
	if !g.authorized(w, r) {
		g.metrics.uploads[outcomeUnauthorized].Inc()
		return
	}
	resp, err := g.upload(w, r)
	if err != nil {
		var ue *uploadError
		if !errors.As(err, &ue) {
			ue = reject(http.StatusInternalServerError, outcomeError, "internal error")
			g.opts.Logger.Error("upload failed", "err", err)
		}
		g.metrics.uploads[ue.outcome].Inc()
		if ue.unread || ue.status == http.StatusRequestEntityTooLarge || ue.status == http.StatusRequestTimeout {
			// The rest of the body is not wanted.
			w.Header().Set("Connection", "close")
		}
		if ue.status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "5")
		}
		writeError(w, ue.status, ue.msg)
		return
	}
	g.metrics.uploads[outcomeCreated].Inc()
	w.Header().Set("Location", "/photos/"+resp.ID)
	writeJSON(w, http.StatusCreated, resp)
}

// upload reads, resizes and stores one upload. A returned *uploadError
// says how to answer; any other error is a 500.
func (g *Gateway) upload(w http.ResponseWriter, r *http.Request) (*UploadResponse, error) {
	ctx := r.Context()
	data, release, err := g.readBody(w, r)
	if err != nil {
		return nil, err
	}
	defer release() // the body's bytes stay charged until the resize is done
	g.metrics.bytesIn.Add(float64(len(data)))

	start := time.Now()
	res, err := g.opts.Resizer.Process(ctx, data)
	if err != nil {
		return nil, resizeError(err)
	}
	g.metrics.resizeSeconds.Observe(time.Since(start).Seconds())
	data = nil // the images are all that is needed from here on

	images := make([]client.Image, 0, 2*len(res.Images))
	stored := 0
	sizes := make(map[string]SizeInfo, len(res.Images))
	var withWebP []needle.SizeCode
	for code, im := range res.Images {
		ct := needle.ContentTypeFromMIME(im.ContentType)
		if ct == needle.TypeUnknown {
			return nil, fmt.Errorf("resizer produced content type %q", im.ContentType)
		}
		size := needle.SizeCode(code)
		images = append(images, client.Image{Size: size, ContentType: ct, Data: im.Data})
		stored += len(im.Data)
		info := SizeInfo{Width: im.Width, Height: im.Height, ContentType: im.ContentType, Bytes: len(im.Data)}
		if webp := g.webpOf(&res.Images[code]); webp != nil {
			if !isWebP(webp) {
				return nil, fmt.Errorf("resizer produced a WebP variant of size %s that is not a WebP file", im.Letter)
			}
			w, _ := size.WebP()
			images = append(images, client.Image{Size: w, ContentType: needle.TypeWebP, Data: webp})
			stored += len(webp)
			info.WebPBytes = len(webp)
			withWebP = append(withWebP, size)
		}
		sizes[im.Letter] = info
	}

	start = time.Now()
	st, err := g.opts.Client.StorePhoto(ctx, images)
	id := st.ID
	if err != nil {
		g.opts.Logger.Warn("photo write failed", "err", err)
		if ctx.Err() != nil {
			return nil, reject(http.StatusServiceUnavailable, outcomeUnavailable, "request cancelled while storing the photo")
		}
		if errors.Is(err, client.ErrUnavailable) {
			return nil, reject(http.StatusServiceUnavailable, outcomeUnavailable, "the photo cluster could not store the photo; try again later")
		}
		return nil, err
	}
	g.metrics.writeSeconds.Observe(time.Since(start).Seconds())
	g.metrics.bytesOut.Add(float64(stored))
	if len(g.opts.CacheNodes) > 0 && !g.opts.NoCachePush {
		g.push(ctx, st, images)
	}

	urls, err := g.opts.Client.PhotoURLs(ctx, id)
	if err != nil {
		// The photo is stored; answering an error would make the caller
		// upload it again. The URLs can be fetched later with GET
		// /photos/{id}.
		g.opts.Logger.Warn("photo stored, but its URLs are unavailable", "photo", id.String(), "err", err)
		urls = map[string]string{}
	}
	resp := &UploadResponse{
		ID: id.String(), Width: res.Width, Height: res.Height,
		URLs: urls, Sizes: sizes, Uploaded: time.Now().UTC().Truncate(time.Millisecond),
		ThumbHash: base64.StdEncoding.EncodeToString(res.ThumbHash),
	}
	if len(withWebP) > 0 {
		resp.WebPURLs = webpURLs(urls, withWebP)
	}
	g.recent.add(id, *resp)
	g.opts.Logger.Info("photo uploaded", "photo", resp.ID, "format", string(res.Format),
		"width", res.Width, "height", res.Height, "stored_bytes", stored)
	return resp, nil
}

// webpOf returns the WebP encoding of one resizer output (Options.WebPOf
// when set, else the resizer's own), nil without one.
func (g *Gateway) webpOf(im *resizer.Image) []byte {
	if g.opts.WebPOf == nil {
		if len(im.WebP) > 0 {
			return im.WebP
		}
		return nil
	}
	if b := g.opts.WebPOf(im); len(b) > 0 {
		return b
	}
	return nil
}

// isWebP reports whether b starts like a WebP file: "RIFF", a length,
// "WEBP".
func isWebP(b []byte) bool {
	return len(b) >= 12 && string(b[0:4]) == "RIFF" && string(b[8:12]) == "WEBP"
}

// resizeError maps a resizer error to the upload's answer.
func resizeError(err error) error {
	switch {
	case errors.Is(err, resizer.ErrEmpty):
		return reject(http.StatusBadRequest, outcomeBadRequest, "%v", err)
	case errors.Is(err, resizer.ErrTooLarge):
		return reject(http.StatusRequestEntityTooLarge, outcomeTooLarge, "%v", err)
	case errors.Is(err, resizer.ErrUnsupported):
		return reject(http.StatusUnsupportedMediaType, outcomeUnsupported, "%v", err)
	case errors.Is(err, resizer.ErrCorrupt):
		return reject(http.StatusUnprocessableEntity, outcomeCorrupt, "%v", err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return reject(http.StatusServiceUnavailable, outcomeUnavailable, "request cancelled while resizing")
	}
	return fmt.Errorf("resize: %w", err)
}

// Limits of upload bodies that are not options.
const (
	// MaxPartHeaderBytes bounds the bytes a multipart body may spend on
	// the headers of one part (and the boundary line before them): the
	// multipart reader is cut off past it, before it has buffered more.
	MaxPartHeaderBytes = 16 << 10
	// firstChunk and maxChunk bound the chunks a body is read into: the
	// first is small, so a client that has sent a few bytes holds a few
	// KiB of the budget, and each next one doubles up to maxChunk.
	firstChunk = 16 << 10
	maxChunk   = 1 << 20
)

// Errors of reading a body, answered by bodyError.
var (
	errTooSlow          = errors.New("upload too slow")
	errUploadTimeout    = errors.New("upload took too long")
	errPartHeaderTooBig = errors.New("multipart part headers too large")
	errBodyMemory       = errors.New("no memory for upload bodies")
)

// readBody returns the uploaded image: the raw body, or the multipart
// field "file". Both are bounded by MaxUploadBytes and read at the pace
// the client sets, as long as it keeps to MinUploadRate. The bytes are
// charged to the gateway's body budget as they arrive, until release is
// called.
func (g *Gateway) readBody(w http.ResponseWriter, r *http.Request) (data []byte, release func(), err error) {
	limit := g.opts.MaxUploadBytes
	mediaType, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	isMultipart := mediaType == "multipart/form-data"
	bodyLimit := limit
	if isMultipart {
		bodyLimit += multipartSlack
	}
	if r.ContentLength > bodyLimit {
		return nil, nil, tooLarge(limit)
	}
	body := g.newBodyReader(w, http.MaxBytesReader(w, r.Body, bodyLimit))
	// Once the body is read, the server's own read that watches for the
	// client going away must not trip on the pacing deadline.
	defer body.clearDeadline()
	if !isMultipart {
		return body.readAll(r.Context(), body, limit)
	}
	boundary := params["boundary"]
	if boundary == "" {
		return nil, nil, reject(http.StatusBadRequest, outcomeBadRequest, "multipart/form-data without a boundary")
	}
	headers := &capReader{r: body}
	mr := multipart.NewReader(headers, boundary)
	for {
		headers.left = MaxPartHeaderBytes
		part, err := mr.NextPart()
		headers.left = -1
		if errors.Is(err, io.EOF) {
			return nil, nil, reject(http.StatusBadRequest, outcomeBadRequest, `multipart upload without a "file" field`)
		}
		if err != nil {
			return nil, nil, bodyError(err, limit)
		}
		if part.FormName() != "file" {
			// Small fields (a caption, a key typed in a form) are skipped.
			if _, err := io.Copy(io.Discard, part); err != nil {
				return nil, nil, bodyError(err, limit)
			}
			continue
		}
		return body.readAll(r.Context(), part, limit)
	}
}

// capReader fails once more than left bytes are read through it, while
// left is not negative. It caps what the multipart reader may read while
// it looks for a part's headers.
type capReader struct {
	r    io.Reader
	left int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left < 0 {
		return c.r.Read(p)
	}
	if c.left == 0 {
		return 0, errPartHeaderTooBig
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// bodyReader reads one upload body at the pace of its client, within the
// gateway's limits: at least MinUploadRate bytes per UploadRateWindow, all
// of it within UploadTimeout. It sets the connection's read deadline to
// the moment the client would fall behind, so a stalled client is cut off
// by the deadline rather than waited for. It also keeps the body's charge
// to the body budget. It is used by one request's goroutine.
type bodyReader struct {
	g  *Gateway
	r  io.Reader
	rc *http.ResponseController
	// deadline ends the whole body (UploadTimeout after its start).
	deadline time.Time
	// The current pacing window ends at windowEnd; inWindow bytes
	// arrived in it, quota are due by its end.
	windowEnd time.Time
	inWindow  int64
	quota     int64
	// charged is the part of the body budget this body holds.
	charged int64
}

func (g *Gateway) newBodyReader(w http.ResponseWriter, r io.Reader) *bodyReader {
	now := time.Now()
	b := &bodyReader{
		g: g, r: r, rc: http.NewResponseController(w),
		deadline: now.Add(g.opts.UploadTimeout),
		quota:    max(1, int64(float64(g.opts.MinUploadRate)*g.opts.UploadRateWindow.Seconds())),
	}
	b.startWindow(now)
	return b
}

func (b *bodyReader) startWindow(now time.Time) {
	b.windowEnd, b.inWindow = now.Add(b.g.opts.UploadRateWindow), 0
}

// Read reads from the body, failing with errTooSlow when the last window
// ended short of its quota and with errUploadTimeout past the deadline.
func (b *bodyReader) Read(p []byte) (int, error) {
	now := time.Now()
	if !now.Before(b.deadline) {
		return 0, errUploadTimeout
	}
	if !now.Before(b.windowEnd) {
		if b.inWindow < b.quota {
			return 0, errTooSlow
		}
		b.startWindow(now)
	}
	// Short of the quota, the client has until the end of this window;
	// with it met, until the end of the next one.
	dl := b.windowEnd
	if b.inWindow >= b.quota {
		dl = dl.Add(b.g.opts.UploadRateWindow)
	}
	if dl.After(b.deadline) {
		dl = b.deadline
	}
	// Not every ResponseWriter supports deadlines (httptest's recorder
	// does not); the checks above still apply between reads.
	_ = b.rc.SetReadDeadline(dl)
	n, err := b.r.Read(p)
	b.inWindow += int64(n)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		if !time.Now().Before(b.deadline) {
			return n, errUploadTimeout
		}
		return n, errTooSlow
	}
	return n, err
}

// clearDeadline lifts the pacing deadline once the body is read.
func (b *bodyReader) clearDeadline() { _ = b.rc.SetReadDeadline(time.Time{}) }

// charge takes n more bytes of the body budget. A body that holds nothing
// yet waits for it in arrival order until its deadline; a body that
// already holds some waits at most one UploadRateWindow and then fails
// with errBodyMemory, so bodies that each hold part of the budget and
// want more cannot wait for each other for ever. The pacing window starts
// afresh after a wait, which is not the client's doing.
func (b *bodyReader) charge(ctx context.Context, n int64) error {
	if b.g.budget.TryAcquire(n) {
		b.charged += n
		b.g.bodyBytes.Add(n)
		return nil
	}
	var cancel context.CancelFunc
	if b.charged == 0 {
		ctx, cancel = context.WithDeadline(ctx, b.deadline)
	} else {
		ctx, cancel = context.WithTimeout(ctx, b.g.opts.UploadRateWindow)
	}
	defer cancel()
	if err := b.g.budget.Acquire(ctx, n); err != nil {
		return errBodyMemory
	}
	b.charged += n
	b.g.bodyBytes.Add(n)
	b.startWindow(time.Now())
	return nil
}

// uncharge gives n bytes of the budget back.
func (b *bodyReader) uncharge(n int64) {
	b.charged -= n
	b.g.release(n)
}

// release gives n bytes of the body budget back.
func (g *Gateway) release(n int64) {
	g.bodyBytes.Add(-n)
	g.budget.Release(n)
}

// readAll reads r (the body, or the part of it holding the image) to its
// end, failing with 413 beyond limit bytes. The bytes go into chunks,
// each charged to the body budget before it is allocated, so the budget
// holds what has arrived (and at most one chunk more); when the body
// spans several chunks they are then copied into one buffer of its exact
// size, charged the same way, and freed. The returned release gives back
// the charge of the buffer.
func (b *bodyReader) readAll(ctx context.Context, r io.Reader, limit int64) (data []byte, release func(), err error) {
	var (
		chunks [][]byte
		total  int64
		next   = int64(firstChunk)
	)
	defer func() {
		if err != nil {
			b.uncharge(b.charged)
		}
	}()
	for {
		if len(chunks) == 0 || len(chunks[len(chunks)-1]) == cap(chunks[len(chunks)-1]) {
			if total > limit {
				return nil, nil, tooLarge(limit)
			}
			n := min(next, limit+1-total)
			if err := b.charge(ctx, n); err != nil {
				return nil, nil, bodyError(err, limit)
			}
			chunks = append(chunks, make([]byte, 0, n))
			next = min(2*next, maxChunk)
		}
		c := &chunks[len(chunks)-1]
		n, err := r.Read((*c)[len(*c):cap(*c)])
		*c = (*c)[:len(*c)+n]
		total += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, bodyError(err, limit)
		}
	}
	if total > limit {
		return nil, nil, tooLarge(limit)
	}
	if len(chunks) == 1 {
		data = chunks[0]
	} else {
		if err := b.charge(ctx, total); err != nil {
			return nil, nil, bodyError(err, limit)
		}
		data = make([]byte, 0, total)
		var spent int64
		for _, c := range chunks {
			data = append(data, c...)
			spent += int64(cap(c))
		}
		chunks = nil
		b.uncharge(spent)
	}
	charged := b.charged
	b.charged = 0
	return data, func() { b.g.release(charged) }, nil
}

// bodyError maps an error reading the body to the upload's answer: 413
// past the body limit or with oversized part headers, 408 for a client
// too slow, 503 without memory for the body, else 400 (a truncated or
// malformed body).
func bodyError(err error, limit int64) error {
	var ue *uploadError
	switch mbe := (*http.MaxBytesError)(nil); {
	case errors.As(err, &ue):
		return ue
	case errors.As(err, &mbe):
		return tooLarge(limit)
	case errors.Is(err, errPartHeaderTooBig):
		return reject(http.StatusRequestEntityTooLarge, outcomeTooLarge, "multipart part headers over %d bytes", MaxPartHeaderBytes)
	case errors.Is(err, errTooSlow):
		return reject(http.StatusRequestTimeout, outcomeTooSlow, "upload too slow: the body must arrive at a steady minimum rate")
	case errors.Is(err, errUploadTimeout):
		return reject(http.StatusRequestTimeout, outcomeTooSlow, "upload not complete within the time allowed")
	case errors.Is(err, errBodyMemory):
		ue := reject(http.StatusServiceUnavailable, outcomeUnavailable, "the gateway has no memory left for upload bodies; try again later")
		ue.unread = true
		return ue
	}
	return reject(http.StatusBadRequest, outcomeBadRequest, "reading the upload: %v", err)
}

func tooLarge(limit int64) *uploadError {
	return reject(http.StatusRequestEntityTooLarge, outcomeTooLarge, "upload over the %d-byte limit", limit)
}
