package imagehttp

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// ErrorHeader names the header that tells a cache or CDN why an image was
// not served. Its values are the Error* constants.
const ErrorHeader = "X-Haybale-Error"

// Values of ErrorHeader. The store sends the first four, the cache the
// last two; a client reading through either treats every one as "try
// another replica or later", never as "the image does not exist".
const (
	// ErrorVolumeNotHere (store, 404): the store does not hold the
	// photo's volume; ask the directory for a replica.
	ErrorVolumeNotHere = "volume-not-here"
	// ErrorVolumeUnavailable (store, 503): the store holds the volume but
	// cannot serve it (it failed to open, or the store is shutting down);
	// try a replica.
	ErrorVolumeUnavailable = "volume-unavailable"
	// ErrorCorrupt (store, 500): the stored bytes failed verification;
	// try a replica.
	ErrorCorrupt = "corrupt"
	// ErrorRead (store, 500): the disk failed to read the bytes; try a
	// replica.
	ErrorRead = "read-error"
	// ErrorUpstreamUnavailable (cache, 502): no replica could serve the
	// image (connection errors, 5xx or corrupt answers from all, or no
	// replica known).
	ErrorUpstreamUnavailable = "upstream-unavailable"
	// ErrorUpstreamTimeout (cache, 504): the replicas did not answer in
	// the cache's upstream time limit.
	ErrorUpstreamTimeout = "upstream-timeout"
)

// Static JSON bodies of the shared answers.
var (
	bodyNotFound = []byte(`{"error":"image not found"}` + "\n")
	bodyNoRoute  = []byte(`{"error":"no such path"}` + "\n")
	bodyMethod   = []byte(`{"error":"method not allowed; use GET or HEAD"}` + "\n")
	bodyRange    = []byte(`{"error":"range not satisfiable"}` + "\n")
	bodyPrecond  = []byte(`{"error":"precondition failed"}` + "\n")
	bodyNotImage = []byte(`{"error":"stored object is not an image"}` + "\n")
)

// NotFound writes the answer for a missing image (unknown key, wrong
// cookie, deleted photo), which is the same whatever the reason, and
// returns its status, 404.
func NotFound(w http.ResponseWriter) int {
	w.Header()["Cache-Control"] = hdrNotFoundTTL
	return WriteStatic(w, http.StatusNotFound, bodyNotFound)
}

// BadPath writes the 400 answer for a malformed image path, with err's
// message, and returns 400.
func BadPath(w http.ResponseWriter, err error) int {
	WriteJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()})
	return http.StatusBadRequest
}

// NoRoute writes the 404 answer for a path that is not served at all and
// returns 404.
func NoRoute(w http.ResponseWriter) int {
	return WriteStatic(w, http.StatusNotFound, bodyNoRoute)
}

// MethodNotAllowed writes the 405 answer with the given Allow header (for
// example "GET, HEAD") and returns 405.
func MethodNotAllowed(w http.ResponseWriter, allow string) int {
	w.Header()["Allow"] = []string{allow}
	return WriteStatic(w, http.StatusMethodNotAllowed, bodyMethod)
}

// Failure writes an answer that must not be cached, "Cache-Control:
// no-store", with "X-Haybale-Error: <reason>" and the fixed JSON body, and
// returns code.
func Failure(w http.ResponseWriter, code int, reason string, body []byte) int {
	h := w.Header()
	h["Cache-Control"] = hdrNoStore
	h[ErrorHeader] = []string{reason}
	return WriteStatic(w, code, body)
}

// WriteStatic writes a fixed JSON body, which should end in a newline,
// and returns code.
func WriteStatic(w http.ResponseWriter, code int, body []byte) int {
	h := w.Header()
	h["Content-Type"] = hdrJSON
	h["X-Content-Type-Options"] = hdrNoSniff
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(code)
	_, _ = w.Write(body)
	return code
}

// WriteJSON writes v as a JSON body followed by a newline; a value that
// does not marshal becomes a 500.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		body = []byte(`{"error":"internal error"}`)
		code = http.StatusInternalServerError
	}
	WriteStatic(w, code, append(body, '\n'))
}
