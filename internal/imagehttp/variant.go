package imagehttp

import (
	"net/http"
	"strings"

	"github.com/haybale/haybale/needle"
)

// hdrVaryAccept is the Vary value of an answer chosen by Accept.
var hdrVaryAccept = []string{"Accept"}

// Choice is the needle a request of the image path names, once its
// extension and, for a bare path, its Accept header are taken into account
// (see Choose).
type Choice struct {
	// Size is the size code to read first.
	Size needle.SizeCode
	// Fallback is the size code to read when Size is missing; equal to
	// Size when there is nothing to fall back to.
	Fallback needle.SizeCode
	// Vary says the answer depends on the Accept header: it must carry
	// "Vary: Accept" (SetVary), whatever its status, so that caches and
	// CDNs keep one answer per variant.
	Vary bool
}

// Choose returns which needle answers a request whose image path parsed
// (needle.ParseImagePath) to size and ext:
//
//   - "<size>.webp" names the WebP variant, and only it: a photo stored
//     without WebP variants answers 404 there;
//   - "<size>.<any other ext>" names the size itself (the extension is
//     cosmetic, as it always was), whatever the Accept header;
//   - the bare "<size>" of t, s, m or l is chosen by Accept: the WebP
//     variant when the request accepts image/webp (listed with a q above
//     zero; "image/*" and "*/*" do not count, since browsers that send only
//     those may not decode WebP), falling back to the size itself when the
//     photo has no WebP variant; the size itself otherwise. The answer
//     carries "Vary: Accept" either way.
func Choose(h http.Header, size needle.SizeCode, ext string) Choice {
	c := Choice{Size: size, Fallback: size}
	if ext != "" {
		return c
	}
	w, ok := size.WebP()
	if !ok || size.IsWebP() {
		return c
	}
	c.Vary = true
	if AcceptsWebP(h) {
		c.Size = w
	}
	return c
}

// SetVary adds "Vary: Accept" to the answer when c says it depends on the
// Accept header. Call it before writing the answer.
func (c Choice) SetVary(w http.ResponseWriter) {
	if c.Vary {
		w.Header()["Vary"] = hdrVaryAccept
	}
}

// AcceptsWebP reports whether the Accept header lists image/webp with a
// quality above zero.
func AcceptsWebP(h http.Header) bool {
	for _, v := range h["Accept"] {
		if AcceptValueWebP(v) {
			return true
		}
	}
	return false
}

// AcceptValueWebP reports whether one Accept header value lists image/webp
// with a quality above zero; a request accepts WebP when any of its Accept
// headers does (AcceptsWebP).
func AcceptValueWebP(v string) bool {
	for v != "" {
		var item string
		item, v, _ = strings.Cut(v, ",")
		mediaType, params, _ := strings.Cut(item, ";")
		if !strings.EqualFold(strings.TrimSpace(mediaType), "image/webp") {
			continue
		}
		if qualityAboveZero(params) {
			return true
		}
	}
	return false
}

// qualityAboveZero reports whether the parameters of one Accept item
// ("q=0.5; level=1") leave its quality above zero. A missing or malformed
// q counts as 1, as RFC 9110 gives no other reading.
func qualityAboveZero(params string) bool {
	for params != "" {
		var p string
		p, params, _ = strings.Cut(params, ";")
		name, value, _ := strings.Cut(p, "=")
		if !strings.EqualFold(strings.TrimSpace(name), "q") {
			continue
		}
		value = strings.TrimSpace(value)
		// A quality is "0", "0.", "0.0".."0.000" for zero; anything else
		// that is well formed is above zero.
		if value == "" || value[0] != '0' {
			return true
		}
		return strings.Trim(value[1:], ".0") != ""
	}
	return true
}
