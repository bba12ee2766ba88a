package imagehttp

import (
	"net/http"
	"strconv"
	"time"

	"github.com/haybale/haybale/needle"
)

// Header values shared by every response. net/http only reads header
// value slices, and each has len == cap, so an append by anyone else
// copies rather than writes into them. They are never written.
var (
	hdrImmutable    = []string{CacheControlImmutable}
	hdrNotFoundTTL  = []string{CacheControlNotFound}
	hdrNoStore      = []string{"no-store"}
	hdrAcceptRanges = []string{"bytes"}
	hdrJSON         = []string{"application/json"}
	hdrNoSniff      = []string{"nosniff"}
)

// Cache-Control values of image answers.
const (
	// CacheControlImmutable is the Cache-Control of an image: its bytes
	// never change under its path.
	CacheControlImmutable = "public, max-age=31536000, immutable"
	// CacheControlNotFound is the Cache-Control of the 404 of a missing
	// image: short, as the photo may be being uploaded.
	CacheControlNotFound = "public, max-age=60"
)

// Image is what an image answer is made of. Serve only reads it and keeps
// no reference to it once it returns.
type Image struct {
	// Data is the whole image.
	Data []byte
	// ContentType is the value slice of the Content-Type header; Serve
	// puts it in the response's header as is, so it may be shared between
	// answers but must not be written.
	ContentType []string
	// ETag is the quoted entity tag (see AppendETag).
	ETag string
	// LastModified is ModTime formatted with http.TimeFormat.
	LastModified string
	// ModTime is the image's modification time, in whole seconds.
	ModTime time.Time
}

// Serve answers a GET or HEAD of an image: 200, 206, 304, 412 or 416 as
// the package doc describes. It returns the status it answered with and
// the number of body bytes written. The caller has checked the method.
//
// An image whose ContentType is not one of the image types
// (IsImageContentType) is never served: the answer is the 502 of a
// corrupt image, "X-Haybale-Error: corrupt", so that a cache or CDN tries
// elsewhere.
func Serve(w http.ResponseWriter, r *http.Request, im *Image) (code, written int) {
	if len(im.ContentType) != 1 || !IsImageContentType(im.ContentType[0]) {
		return Failure(w, http.StatusBadGateway, ErrorCorrupt, bodyNotImage), 0
	}
	hdr := w.Header()
	hdr["X-Content-Type-Options"] = hdrNoSniff
	// One allocation holds every per-response header value.
	vals := make([]string, 4)
	vals[0], vals[1] = im.ETag, im.LastModified
	hdr["Etag"] = vals[0:1:1]
	hdr["Last-Modified"] = vals[1:2:2]
	hdr["Cache-Control"] = hdrImmutable

	// Preconditions, in the order of RFC 9110 section 13.2.2.
	failed := false
	if ifm := r.Header["If-Match"]; len(ifm) > 0 {
		failed = !ETagListMatch(ifm, vals[0], false)
	} else if ius := r.Header["If-Unmodified-Since"]; len(ius) > 0 {
		t, err := http.ParseTime(ius[0])
		failed = err == nil && im.ModTime.After(t)
	}
	if failed {
		// An error answer must not be cached as the image for a year.
		delete(hdr, "Cache-Control")
		return WriteStatic(w, http.StatusPreconditionFailed, bodyPrecond), 0
	}
	if inm := r.Header["If-None-Match"]; len(inm) > 0 {
		if ETagListMatch(inm, vals[0], true) {
			w.WriteHeader(http.StatusNotModified)
			return http.StatusNotModified, 0
		}
	} else if ims := r.Header["If-Modified-Since"]; len(ims) > 0 {
		if t, err := http.ParseTime(ims[0]); err == nil && !im.ModTime.After(t) {
			w.WriteHeader(http.StatusNotModified)
			return http.StatusNotModified, 0
		}
	}

	hdr["Content-Type"] = im.ContentType
	hdr["Accept-Ranges"] = hdrAcceptRanges
	body := im.Data
	code = http.StatusOK
	if rng := r.Header["Range"]; len(rng) == 1 && IfRangeHolds(r.Header["If-Range"], vals[0], im.ModTime) {
		start, end, res := ParseRange(rng[0], int64(len(body)))
		switch res {
		case RangeOne:
			vals[2] = "bytes " + strconv.FormatInt(start, 10) + "-" + strconv.FormatInt(end-1, 10) + "/" + strconv.Itoa(len(body))
			hdr["Content-Range"] = vals[2:3:3]
			body = body[start:end]
			code = http.StatusPartialContent
		case RangeUnsatisfiable, RangeInvalid:
			if res == RangeUnsatisfiable {
				vals[2] = "bytes */" + strconv.Itoa(len(body))
				hdr["Content-Range"] = vals[2:3:3]
			}
			delete(hdr, "Cache-Control")
			delete(hdr, "Accept-Ranges")
			return WriteStatic(w, http.StatusRequestedRangeNotSatisfiable, bodyRange), 0
		}
	}
	vals[3] = strconv.Itoa(len(body))
	hdr["Content-Length"] = vals[3:4:4]
	w.WriteHeader(code)
	if r.Method == http.MethodGet {
		written, _ = w.Write(body)
	}
	return code, written
}

// IsImageContentType reports whether ct is exactly one of the media types
// images are stored with (image/jpeg, image/png, image/gif, image/webp),
// without parameters. Nothing else is ever served as an image.
func IsImageContentType(ct string) bool {
	return needle.ContentTypeFromMIME(ct) != needle.TypeUnknown
}

// AppendETag appends the entity tag of an image whose needle checksum is
// sum: the checksum as 16 lower-case hex digits, zero-padded, in double
// quotes.
func AppendETag(dst []byte, sum uint64) []byte {
	const digits = "0123456789abcdef"
	dst = append(dst, '"')
	for shift := 60; shift >= 0; shift -= 4 {
		dst = append(dst, digits[(sum>>uint(shift))&0xf])
	}
	return append(dst, '"')
}
