package imagehttp

import (
	"net/http"
	"strings"
	"time"
)

// ETagListMatch reports whether a list of entity tags (the values of an
// If-Match or If-None-Match header) holds etag, or "*". weak selects the
// weak comparison of If-None-Match; If-Match compares strongly, so a W/
// tag never matches. Malformed elements are skipped.
func ETagListMatch(values []string, etag string, weak bool) bool {
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
			if (weak || !isWeak) && tag == etag {
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

// IfRangeHolds reports whether a Range request should be honoured given
// the values of its If-Range header: absent, a strongly matching entity
// tag, or exactly the Last-Modified date.
func IfRangeHolds(values []string, etag string, modTime time.Time) bool {
	if len(values) == 0 {
		return true
	}
	if len(values) > 1 {
		return false
	}
	v := strings.TrimSpace(values[0])
	if strings.HasPrefix(v, `"`) {
		tag, rest, ok := scanETag(v)
		return ok && rest == "" && tag == etag
	}
	if strings.HasPrefix(v, "W/") {
		return false
	}
	t, err := http.ParseTime(v)
	return err == nil && t.Equal(modTime)
}

// RangeResult classifies a Range header.
type RangeResult int

const (
	// RangeIgnore: serve the whole body (no usable range, another unit,
	// or several ranges, which are answered with the whole body).
	RangeIgnore RangeResult = iota
	// RangeOne: serve body[start:end].
	RangeOne
	// RangeUnsatisfiable: answer 416 with the body's length.
	RangeUnsatisfiable
	// RangeInvalid: a malformed byte range; answer 416.
	RangeInvalid
)

// maxRangeHeader bounds the Range header ParseRange parses; longer ones
// (only ever many ranges) are answered with the whole body.
const maxRangeHeader = 1 << 10

// ParseRange interprets a Range header for a body of size bytes, as
// RFC 9110 section 14 describes, for a single byte range. A syntactically
// invalid byte range set is unsatisfiable, as net/http's ServeContent
// answers it. For RangeOne, 0 <= start < end <= size.
func ParseRange(s string, size int64) (start, end int64, res RangeResult) {
	spec, ok := strings.CutPrefix(s, "bytes=")
	if !ok {
		if strings.Contains(s, "=") && !strings.HasPrefix(strings.TrimSpace(s), "bytes") {
			return 0, 0, RangeIgnore // another range unit
		}
		return 0, 0, RangeInvalid
	}
	if len(spec) > maxRangeHeader || strings.IndexByte(spec, ',') >= 0 {
		return 0, 0, RangeIgnore
	}
	spec = strings.TrimSpace(spec)
	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, RangeInvalid
	}
	first, last = strings.TrimSpace(first), strings.TrimSpace(last)
	if first == "" {
		// Suffix range: the last n bytes.
		n, ok := parseDigits(last)
		if !ok {
			return 0, 0, RangeInvalid
		}
		if n == 0 || size == 0 {
			return 0, 0, RangeUnsatisfiable
		}
		return size - min(n, size), size, RangeOne
	}
	a, ok := parseDigits(first)
	if !ok {
		return 0, 0, RangeInvalid
	}
	if last == "" {
		if a >= size {
			return 0, 0, RangeUnsatisfiable
		}
		return a, size, RangeOne
	}
	b, ok := parseDigits(last)
	if !ok || b < a {
		return 0, 0, RangeInvalid
	}
	if a >= size {
		return 0, 0, RangeUnsatisfiable
	}
	return a, min(b, size-1) + 1, RangeOne
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
