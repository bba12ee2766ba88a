package evloop

import (
	"bytes"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
)

// maxHeaderFields bounds the header fields of a request; a request with
// more is answered 431, as one whose headers are too long.
const maxHeaderFields = 100

// crlf2 ends a request's header block.
var crlf2 = []byte("\r\n\r\n")

// Request is a request parsed on a loop: its line and header fields, as
// slices of the connection's read buffer. A Handler must not keep it, or
// any slice of it, after it returns.
type Request struct {
	// Method and Target are the request line's method and target.
	Method, Target []byte
	// Minor is the minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1
	// and the later 1.x (HTTP/1.2 to HTTP/1.9), which are served as
	// HTTP/1.1, as net/http's server serves them.
	Minor int
	raw   []byte // the request line and headers, up to the blank line
	names [][]byte
	vals  [][]byte
	// close: the answer ends the connection (Connection: close, or
	// HTTP/1.0 without keep-alive).
	close bool
	// keepAlive10: an HTTP/1.0 request that asked for keep-alive.
	keepAlive10 bool
	body        bool // the request announces a body
}

// IsGet and IsHead report the request's method.
func (r *Request) IsGet() bool { return string(r.Method) == "GET" }

// IsHead reports whether the request is a HEAD.
func (r *Request) IsHead() bool { return string(r.Method) == "HEAD" }

// Peek returns the value of the first header field named name (compared
// without regard to case), or nil when there is none.
func (r *Request) Peek(name string) []byte {
	for i, n := range r.names {
		if equalFold(n, name) {
			return r.vals[i]
		}
	}
	return nil
}

// Values calls fn with the value of every header field named name, in
// order, until fn returns false.
func (r *Request) Values(name string, fn func(v []byte) bool) {
	for i, n := range r.names {
		if equalFold(n, name) && !fn(r.vals[i]) {
			return
		}
	}
}

// equalFold reports whether the ASCII b and s are equal without regard to
// case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// parseError is an error of parse, with the status it is answered with.
type parseError struct {
	status int
	msg    string
}

func (e *parseError) Error() string { return e.msg }

// Errors of parse. A request refused with one is answered with its
// status, and the connection ends.
var (
	errMalformed = &parseError{http.StatusBadRequest, "malformed request"}
	errTooLarge  = &parseError{http.StatusRequestHeaderFieldsTooLarge, "request line and headers too large"}
	// errVersion: a well-formed version whose major is not 1 (HTTP/2.0
	// or HTTP/0.9 written as a request line), refused as net/http's
	// HTTP/1 server refuses it.
	errVersion = &parseError{http.StatusHTTPVersionNotSupported, "unsupported protocol version"}
	// errExpectation: an Expect field other than 100-continue, refused
	// as net/http's server refuses it (RFC 9110, 10.1.1).
	errExpectation = &parseError{http.StatusExpectationFailed, "unsupported Expect field: only 100-continue is understood"}
)

// errorStatus returns the status a parse error is answered with.
func errorStatus(err error) int {
	var pe *parseError
	if errors.As(err, &pe) {
		return pe.status
	}
	return http.StatusBadRequest
}

// blankAfterPost is how many bytes after a POST request are looked at
// for CR and LF bytes to skip before the next request: the tolerance of
// RFC 9112, 2.2 for clients that end a POST's body with a stray CRLF, as
// net/http's server applies it (it skips the CR and LF bytes among the
// first four after a POST, and after no other method).
const blankAfterPost = 4

// skipBlank returns how many of data's first bytes are CR or LF, up to
// *budget, and takes them from the budget; a byte of the next request
// ends the budget, since only the bytes right after a POST are skipped.
func skipBlank(data []byte, budget *int) int {
	n := 0
	for n < *budget && n < len(data) && (data[n] == '\r' || data[n] == '\n') {
		n++
	}
	*budget -= n
	if n < len(data) {
		*budget = 0
	}
	return n
}

// blankAfter returns the skipBlank budget after the request r.
func (r *Request) blankAfter() int {
	if string(r.Method) == "POST" {
		return blankAfterPost
	}
	return 0
}

// parse parses raw, a request's line and header fields up to and with the
// blank line that ends them, into r. The fields keep slices of raw.
func (r *Request) parse(raw []byte) error {
	r.raw = raw
	r.names, r.vals = r.names[:0], r.vals[:0]
	r.close, r.keepAlive10, r.body = false, false, false
	line, rest, ok := cutLine(raw)
	if !ok {
		return errMalformed
	}
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return errMalformed
	}
	r.Method = line[:sp]
	for _, c := range r.Method {
		if !isToken(c) {
			return errMalformed
		}
	}
	line = line[sp+1:]
	sp = bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return errMalformed
	}
	r.Target = line[:sp]
	escaped := false
	for _, c := range r.Target {
		if c <= ' ' || c == 0x7f {
			return errMalformed
		}
		escaped = escaped || c == '%'
	}
	if (r.Target[0] != '/' || escaped) && !validTarget(r.Method, r.Target) {
		return errMalformed
	}
	major := 1
	switch v := line[sp+1:]; string(v) {
	case "HTTP/1.1":
		r.Minor = 1
	case "HTTP/1.0":
		r.Minor = 0
	default:
		// As net/http's ParseHTTPVersion: "HTTP/" and a digit, a dot and
		// a digit. A 1.x above 1.0 is served as 1.1; another major is
		// refused (505) once the rest of the request is read as valid.
		if len(v) != len("HTTP/X.Y") || string(v[:5]) != "HTTP/" || v[6] != '.' || !isDigit(v[5]) || !isDigit(v[7]) {
			return errMalformed
		}
		major, r.Minor = int(v[5]-'0'), min(int(v[7]-'0'), 1)
	}
	host := false
	var expect []byte // the first Expect field's value
	// refused: a field net/http's ReadRequest takes and its server
	// refuses after it looks at the version.
	refused := false
	for {
		line, rest, ok = cutLine(rest)
		if !ok {
			return errMalformed
		}
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return errMalformed // also a continuation line (obsolete folding)
		}
		name := line[:colon]
		for _, c := range name {
			if !tokenBytes[c] {
				if c != ' ' || name[0] == ' ' {
					return errMalformed // a leading space: folding
				}
				// net/http's ReadRequest takes a space in a name (its
				// server refuses it after the version).
				refused = true
			}
		}
		val := trimOWS(line[colon+1:])
		for _, c := range val {
			if ctlBytes[c] {
				return errMalformed
			}
		}
		if len(r.names) == maxHeaderFields {
			return errTooLarge
		}
		r.names = append(r.names, name)
		r.vals = append(r.vals, val)
		switch {
		case equalFold(name, "Host"):
			if host {
				return errMalformed // net/http refuses a second Host too
			}
			host = true
			for _, c := range val {
				if !validHostByte(c) {
					refused = true // as net/http's server refuses it
				}
			}
		case equalFold(name, "Content-Length"):
			n, err := strconv.ParseUint(string(val), 10, 63)
			if err != nil {
				return errMalformed
			}
			if n > 0 {
				r.body = true
			}
		case equalFold(name, "Transfer-Encoding"):
			r.body = true
		case equalFold(name, "Expect"):
			if expect == nil {
				expect = val
			}
		case equalFold(name, "Connection"):
			forEachToken(val, func(tok []byte) {
				switch {
				case equalFold(tok, "close"):
					r.close = true
				case equalFold(tok, "keep-alive"):
					r.keepAlive10 = r.Minor == 0
				}
			})
		}
	}
	// In the order of net/http's server: the version, the Host, then
	// the expectation.
	if major != 1 {
		return errVersion
	}
	if r.Minor == 1 && !host || refused {
		return errMalformed // RFC 9112, 3.2: a 1.1 request must name its host
	}
	if len(expect) > 0 && !hasToken(expect, "100-continue") {
		return errExpectation
	}
	if r.Minor == 0 && !r.keepAlive10 {
		r.close = true
	}
	if r.close {
		r.keepAlive10 = false
	}
	return nil
}

// validTarget reports whether net/http's ReadRequest takes target, so
// that the loop's handler answers no request the fallback path would
// refuse as malformed. An origin-form target without escapes is valid
// as it stands; the others (absolute-form, authority-form for CONNECT,
// the asterisk, escapes) are checked as ReadRequest checks them.
func validTarget(method, target []byte) bool {
	s := string(target)
	if string(method) == "CONNECT" && s[0] != '/' {
		s = "http://" + s
	}
	_, err := url.ParseRequestURI(s)
	return err == nil
}

// validHostByte reports whether c may appear in a Host field: the bytes
// of a host, an IP literal (with a zone) and a port, the set net/http's
// server takes (RFC 3986, 3.2.2).
func validHostByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return c < 0x7f && bytes.IndexByte([]byte("!$%&'()*+,-.:;=[]_~"), c) >= 0
}

// cutLine cuts the first CRLF-ended line off b.
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	return b[:i-1], b[i+1:], true
}

// trimOWS returns v without the spaces and tabs around it: a slice of v,
// never nil (an empty field is there, and Peek says so), where bytes.Trim
// returns nil for an empty result.
func trimOWS(v []byte) []byte {
	i, j := 0, len(v)
	for i < j && (v[i] == ' ' || v[i] == '\t') {
		i++
	}
	for j > i && (v[j-1] == ' ' || v[j-1] == '\t') {
		j--
	}
	return v[i:j:j]
}

// forEachToken calls fn with each comma-separated token of v, trimmed.
func forEachToken(v []byte, fn func([]byte)) {
	for len(v) > 0 {
		tok := v
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if tok = bytes.Trim(tok, " \t"); len(tok) > 0 {
			fn(tok)
		}
	}
}

// hasToken reports whether v holds token, without regard to case, between
// the start or a space, comma or tab and the end or one of those: the
// test net/http's server applies to Expect (its hasToken).
func hasToken(v []byte, token string) bool {
	for sp := 0; sp+len(token) <= len(v); sp++ {
		if sp > 0 && !isTokenBoundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !isTokenBoundary(v[end]) {
			continue
		}
		if equalFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func isTokenBoundary(c byte) bool { return c == ' ' || c == ',' || c == '\t' }

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isToken reports whether c may appear in an HTTP token (RFC 9110, 5.6.2).
func isToken(c byte) bool { return tokenBytes[c] }

// tokenBytes and ctlBytes are tables of the bytes of a token, and of the
// control bytes a field value must not hold (all but tab), looked up
// once a byte in the loops over every byte of a request's fields.
var tokenBytes, ctlBytes = func() (tok, ctl [256]bool) {
	for c := range 256 {
		b := byte(c)
		tok[c] = b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' ||
			b < 0x7f && bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), b) >= 0
		ctl[c] = b < ' ' && b != '\t' || b == 0x7f
	}
	return tok, ctl
}()

// clone returns a copy of r for a request answered off the loop. Its
// byte slices still alias the connection's read buffer, which the loop
// leaves alone while the connection waits for that answer.
func (r *Request) clone() *Request {
	c := *r
	c.names = slices.Clone(r.names)
	c.vals = slices.Clone(r.vals)
	return &c
}
