package evloop

import (
	"bytes"
	"errors"
	"net/url"
	"slices"
	"strconv"
)

// maxHeaderFields bounds the header fields of a request; a request with
// more is answered 431, as one whose headers are too long.
const maxHeaderFields = 100

// Request is a request parsed on a loop: its line and header fields, as
// slices of the connection's read buffer. A Handler must not keep it, or
// any slice of it, after it returns.
type Request struct {
	// Method and Target are the request line's method and target.
	Method, Target []byte
	// Minor is the minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
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

// Errors of parse, which the loop answers 400 or 431.
var (
	errMalformed = errors.New("malformed request")
	errTooLarge  = errors.New("request line and headers too large")
)

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
	switch string(line[sp+1:]) {
	case "HTTP/1.1":
		r.Minor = 1
	case "HTTP/1.0":
		r.Minor = 0
	default:
		return errMalformed
	}
	host := false
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
			if !isToken(c) {
				return errMalformed
			}
		}
		val := trimOWS(line[colon+1:])
		for _, c := range val {
			if c < ' ' && c != '\t' || c == 0x7f {
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
					return errMalformed // as net/http's server refuses it
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
	if r.Minor == 1 && !host {
		return errMalformed // RFC 9112, 3.2: a 1.1 request must name its host
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

// isToken reports whether c may appear in an HTTP token (RFC 9110, 5.6.2).
func isToken(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return c < 0x7f && bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

// clone returns a copy of r for a request answered off the loop. Its
// byte slices still alias the connection's read buffer, which the loop
// leaves alone while the connection waits for that answer.
func (r *Request) clone() *Request {
	c := *r
	c.names = slices.Clone(r.names)
	c.vals = slices.Clone(r.vals)
	return &c
}
