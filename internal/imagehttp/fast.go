package imagehttp

import "bytes"

// The pieces the store's and the cache's fast paths share. A fast path
// answers a plain image GET or HEAD without net/http and hands everything
// else to the net/http handler; these say which requests are plain.

// The headers of an image answer as bytes, spelled as net/http writes
// them, for the fast paths, which set headers from byte slices.
var (
	RawETag            = []byte("Etag")
	RawLastModified    = []byte("Last-Modified")
	RawCacheControl    = []byte("Cache-Control")
	RawAcceptRanges    = []byte("Accept-Ranges")
	RawNoSniffName     = []byte("X-Content-Type-Options")
	RawNoSniff         = []byte("nosniff")
	RawBytes           = []byte("bytes")
	RawImmutable       = []byte(CacheControlImmutable)
	RawCacheNotFound   = []byte(CacheControlNotFound)
	RawJSONContentType = []byte("application/json")
	RawErrorHeaderName = []byte(ErrorHeader)
	RawVary            = []byte("Vary")
	RawAccept          = []byte("Accept")
)

// ConditionalHeaders are the request headers that make an image request
// conditional or partial; Serve answers those.
var ConditionalHeaders = [...]string{"If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "Range", "If-Range"}

// PlainTarget reports whether a request target (the request line's URI,
// as sent) is an image path that net/http would hand to a handler
// unchanged: it starts with /p/ and has no query, fragment, escape,
// backslash, empty or dot segment, which another server library might
// decode or normalise differently.
func PlainTarget(uri []byte) bool {
	if !bytes.HasPrefix(uri, []byte("/p/")) {
		return false
	}
	for _, c := range uri {
		switch c {
		case '?', '%', '#', '\\':
			return false
		}
	}
	return !bytes.Contains(uri, []byte("/.")) && !bytes.Contains(uri, []byte("//"))
}
