package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
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
	// URLs maps each size letter (t, s, m, l) to the image URL.
	URLs map[string]string `json:"urls"`
	// Sizes describes each stored size, keyed by letter.
	Sizes map[string]SizeInfo `json:"sizes"`
	// Uploaded is when the gateway stored the photo.
	Uploaded time.Time `json:"uploaded"`
}

// SizeInfo describes one stored size of a photo.
type SizeInfo struct {
	Width       int    `json:"width"`
	Height      int    `json:"height"`
	ContentType string `json:"content_type"`
	Bytes       int    `json:"bytes"`
}

// Upload outcomes, the label values of haybale_gateway_uploads_total.
const (
	outcomeCreated      = "created"
	outcomeUnauthorized = "unauthorized"
	outcomeBadRequest   = "bad_request"
	outcomeTooLarge     = "too_large"
	outcomeUnsupported  = "unsupported"
	outcomeCorrupt      = "corrupt"
	outcomeUnavailable  = "unavailable"
	outcomeError        = "error"
)

var uploadOutcomes = []string{
	outcomeCreated, outcomeUnauthorized, outcomeBadRequest, outcomeTooLarge,
	outcomeUnsupported, outcomeCorrupt, outcomeUnavailable, outcomeError,
}

// uploadError is a rejected upload: the status, outcome label and message
// of its answer.
type uploadError struct {
	status  int
	outcome string
	msg     string
}

func (e *uploadError) Error() string { return e.msg }

func reject(status int, outcome, format string, args ...any) *uploadError {
	return &uploadError{status: status, outcome: outcome, msg: fmt.Sprintf(format, args...)}
}

func (g *Gateway) handleUpload(w http.ResponseWriter, r *http.Request) {
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
		if ue.status == http.StatusRequestEntityTooLarge {
			// The rest of the body is not wanted.
			w.Header().Set("Connection", "close")
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

	images := make([]client.Image, 0, len(res.Images))
	stored := 0
	sizes := make(map[string]SizeInfo, len(res.Images))
	for code, im := range res.Images {
		ct := needle.ContentTypeFromMIME(im.ContentType)
		if ct == needle.TypeUnknown {
			return nil, fmt.Errorf("resizer produced content type %q", im.ContentType)
		}
		images = append(images, client.Image{Size: needle.SizeCode(code), ContentType: ct, Data: im.Data})
		stored += len(im.Data)
		sizes[im.Letter] = SizeInfo{Width: im.Width, Height: im.Height, ContentType: im.ContentType, Bytes: len(im.Data)}
	}

	start = time.Now()
	id, err := g.opts.Client.WritePhoto(ctx, images)
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
	}
	g.recent.add(id, *resp)
	g.opts.Logger.Info("photo uploaded", "photo", resp.ID, "format", string(res.Format),
		"width", res.Width, "height", res.Height, "stored_bytes", stored)
	return resp, nil
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

// readBody returns the uploaded image: the raw body, or the multipart
// field "file". Both are bounded by MaxUploadBytes. The bytes are charged
// to the gateway's body budget until release is called.
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
	body := &idleReader{r: http.MaxBytesReader(w, r.Body, bodyLimit), rc: http.NewResponseController(w), idle: g.opts.BodyIdleTimeout}
	if !isMultipart {
		return g.readAll(r.Context(), body, r.ContentLength, limit)
	}
	boundary := params["boundary"]
	if boundary == "" {
		return nil, nil, reject(http.StatusBadRequest, outcomeBadRequest, "multipart/form-data without a boundary")
	}
	mr := multipart.NewReader(body, boundary)
	for {
		part, err := mr.NextPart()
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
		return g.readAll(r.Context(), part, -1, limit)
	}
}

// idleReader gives up on a client that sends nothing for idle: each read
// gets a fresh deadline, so a slow but steady upload goes on while a
// stalled one frees its share of the body budget.
type idleReader struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
}

func (ir *idleReader) Read(p []byte) (int, error) {
	if ir.idle > 0 {
		// Not every ResponseWriter supports deadlines (httptest's
		// recorder does not); the server's ReadTimeout still applies.
		_ = ir.rc.SetReadDeadline(time.Now().Add(ir.idle))
	}
	return ir.r.Read(p)
}

// readAll reads r to its end, failing with 413 beyond limit bytes. It
// charges the body budget before it allocates: the declared size when
// known (one buffer of exactly that size), else limit+1 (a buffer that
// grows no further than that). Waiting for budget honours ctx.
func (g *Gateway) readAll(ctx context.Context, r io.Reader, size, limit int64) ([]byte, func(), error) {
	charge := limit + 1
	if size >= 0 && size <= limit {
		charge = size + 1
	}
	if err := g.budget.Acquire(ctx, charge); err != nil {
		return nil, nil, reject(http.StatusServiceUnavailable, outcomeUnavailable, "request cancelled while waiting for memory to read the upload")
	}
	release := func() { g.budget.Release(charge) }
	buf := make([]byte, 0, min(charge, 256<<10))
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) >= charge {
				release()
				return nil, nil, tooLarge(limit)
			}
			nb := make([]byte, len(buf), min(2*int64(cap(buf)), charge))
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			release()
			return nil, nil, bodyError(err, limit)
		}
	}
	if int64(len(buf)) > limit {
		release()
		return nil, nil, tooLarge(limit)
	}
	return buf, release, nil
}

// bodyError maps an error reading the body to the upload's answer: 413
// past the body limit, else 400 (a truncated or malformed body).
func bodyError(err error, limit int64) error {
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		return tooLarge(limit)
	}
	return reject(http.StatusBadRequest, outcomeBadRequest, "reading the upload: %v", err)
}

func tooLarge(limit int64) *uploadError {
	return reject(http.StatusRequestEntityTooLarge, outcomeTooLarge, "upload over the %d-byte limit", limit)
}
