package evloop

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// hostileRequests are requests that parsers are known to disagree on:
// the seeds of the fuzz tests, run by every go test.
var hostileRequests = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /p/1/2/orig.jpg HTTP/1.0\r\n\r\n",
	"HEAD /p/1/2/orig.jpg HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
	"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	// Bodies: Content-Length with Transfer-Encoding, duplicates, signs,
	// padding, overflow.
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length:  0 \r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0 0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0,0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0_0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 000\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
	"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello",
	" GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	// Folding, bare CR and LF, NUL.
	"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n Content-Length: 5\r\n\r\nhello",
	"GET / HTTP/1.1\r\nHost: a\r\n\tX: 1\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET / HTTP/1.1\r\nHost: a\nContent-Length: 5\r\n\r\nhello",
	"GET / HTTP/1.1\r\nHost: a\rContent-Length: 5\r\n\r\nhello",
	"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
	"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET\x00/ HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX\x00: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
	"GET / HTTP/1.1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n",
	// Targets.
	"GET http://evil/p/1/2/orig.jpg HTTP/1.1\r\nHost: a\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
	"CONNECT a:80 HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /p/../../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /p/%2e%2e/1/2/orig.jpg HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /p/1/2/orig.jpg?x HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /p/1/2/orig.jpg#x HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET abc HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n",
	// Versions, methods, spacing.
	"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.9\r\nHost: a\r\nConnection: close\r\n\r\n",
	"GET / HTTP/1.2\r\n\r\n",
	"GET / HTTP/1.10\r\nHost: a\r\n\r\n",
	"GET / HTTP/3.0\r\nHost: a\r\n\r\n",
	"GET / HTTP/2.0\r\nHost: a b\r\n\r\n",
	"GET / HTTP/2.0\r\nHost: a\r\nBad Name: 1\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	"0 * HTTP/0.0\r\n 000:0000\r\n\r\n",
	"GET / HTTP/2.0\r\nHost: a\r\nX: 1\r\n Y: 2\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nBad Name : 1\r\n\r\n",
	"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
	"GET / HTTP/0.9\r\n\r\n",
	"GET / http/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/01.1\r\nHost: a\r\n\r\n",
	"GET /\r\n\r\n",
	"get / HTTP/1.1\r\nHost: a\r\n\r\n",
	"head / HTTP/1.1\r\nHost: a\r\n\r\n",
	"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
	"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
	// Connection semantics.
	"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, CLOSE\r\n\r\n",
	"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
	"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nExpect: \r\nExpect: foo\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nExpect: foo,100-Continue\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue-x\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\nContent-Length: 3\r\n\r\nabc",
	"GET / HTTP/1.0\r\nExpect: foo\r\n\r\n",
	// CR and LF before a request: refused, but after a POST.
	"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\n\r\n\n\n\n\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\n\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
}

// FuzzParse checks Request.parse against net/http's ReadRequest, the
// parser of the fallback path: on any bytes parse must not panic, and a
// request it accepts must be read by ReadRequest as the same request,
// without a body, and end where it ends.
func FuzzParse(f *testing.F) {
	for _, s := range hostileRequests {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		end := bytes.Index(data, crlf2)
		if end < 0 {
			return
		}
		raw := data[:end+4]
		var r Request
		err := r.parse(raw)
		switch {
		case err == nil:
		case errors.Is(err, errVersion), errors.Is(err, errExpectation):
			// Refused by net/http's server too, with the same status,
			// after ReadRequest reads it.
			hr, herr := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
			if herr != nil {
				t.Fatalf("%q: parse refuses it with %d, net/http's ReadRequest with %v", raw, errorStatus(err), herr)
			}
			if got := netHTTPServerStatus(hr, raw); got != errorStatus(err) && !(got == 0 && hr.Method == "PRI") {
				// (The loops serve no HTTP/2: they refuse its preface.)
				t.Fatalf("%q: parse refuses it with %d, net/http's server answers %d", raw, errorStatus(err), got)
			}
			return
		case errors.Is(err, errMalformed), errors.Is(err, errTooLarge):
			return
		default:
			t.Fatalf("parse: unexpected error %v", err)
		}
		if r.body {
			return // refused with 413 and the connection closed, unread
		}
		hr, herr := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		if herr != nil {
			t.Fatalf("parse accepted %q; net/http: %v", raw, herr)
		}
		if got := netHTTPServerStatus(hr, raw); got != 0 {
			t.Fatalf("parse accepted %q; net/http's server answers %d", raw, got)
		}
		if hr.Method != string(r.Method) || hr.RequestURI != string(r.Target) || hr.ProtoMajor != 1 || min(hr.ProtoMinor, 1) != r.Minor {
			t.Fatalf("%q: parse read %s %s 1.%d, net/http %s %s %d.%d", raw, r.Method, r.Target, r.Minor, hr.Method, hr.RequestURI, hr.ProtoMajor, hr.ProtoMinor)
		}
		// The checks net/http's server makes past ReadRequest (Host and
		// names: netHTTPServerStatus, above).
		for k, vv := range hr.Header {
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("parse accepted %q; net/http's server refuses its field %q: %q", raw, k, v)
				}
			}
		}
		if hr.Close != r.close {
			t.Fatalf("%q: parse reads close=%v, net/http %v", raw, r.close, hr.Close)
		}
		for i, n := range r.names {
			k := http.CanonicalHeaderKey(string(n))
			if k == "Host" {
				// net/http takes an absolute-form target's host instead.
				if r.Target[0] == '/' && hr.Host != string(r.vals[i]) {
					t.Fatalf("%q: Host %q, net/http %q", raw, r.vals[i], hr.Host)
				}
				continue
			}
			if _, ok := hr.Header[k]; !ok {
				t.Fatalf("%q: net/http has no %q field", raw, k)
			}
		}
		// No body: net/http's request ends at the blank line too.
		if hr.ContentLength != 0 || len(hr.TransferEncoding) > 0 {
			t.Fatalf("%q: parse sees no body, net/http a body of %d %v", raw, hr.ContentLength, hr.TransferEncoding)
		}
		if n, _ := io.Copy(io.Discard, hr.Body); n != 0 {
			t.Fatalf("%q: net/http read a body of %d bytes", raw, n)
		}
	})
}

// netHTTPServerStatus returns the status net/http's server answers a
// request with before its handler sees it, for its version, Host and
// field names and its Expect field, or 0 when it hands the request to
// its handler (or takes it as the start of HTTP/2, for "PRI *
// HTTP/2.0"). hr is the request ReadRequest read from raw.
func netHTTPServerStatus(hr *http.Request, raw []byte) int {
	// ReadRequest drops the Host fields, which the server looks at.
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw)))
	tp.ReadLine()
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return http.StatusBadRequest
	}
	hosts := hdr["Host"]
	h2 := hr.Method == "PRI" && len(hdr) == 0 && hr.URL.Path == "*" && hr.Proto == "HTTP/2.0"
	switch {
	case hr.ProtoMajor != 1 && !h2:
		return http.StatusHTTPVersionNotSupported
	case hr.ProtoMinor >= 1 && len(hosts) == 0 && !h2 && hr.Method != "CONNECT",
		len(hosts) == 1 && !httpguts.ValidHostHeader(hosts[0]):
		return http.StatusBadRequest
	}
	for k := range hdr {
		if !httpguts.ValidHeaderFieldName(k) {
			return http.StatusBadRequest
		}
	}
	if e := hdr.Get("Expect"); e != "" && !hasToken([]byte(e), "100-continue") {
		return http.StatusExpectationFailed
	}
	return 0
}

// TestParseRefusesTargetsNetHTTPRefuses: a target ReadRequest calls
// malformed is malformed on the loop too, and the forms it takes pass.
func TestParseRefusesTargetsNetHTTPRefuses(t *testing.T) {
	for _, tc := range []struct {
		line string
		ok   bool
	}{
		{"GET /%zz HTTP/1.1", false},
		{"GET /p/%2 HTTP/1.1", false},
		{"GET abc HTTP/1.1", false},
		{"GET /p/%41 HTTP/1.1", true},
		{"GET /p/1/2/orig.jpg HTTP/1.1", true},
		{"GET http://h/p/1 HTTP/1.1", true},
		{"OPTIONS * HTTP/1.1", true},
		{"CONNECT h:443 HTTP/1.1", true},
	} {
		var r Request
		err := r.parse([]byte(tc.line + "\r\nHost: a\r\n\r\n"))
		if (err == nil) != tc.ok {
			t.Errorf("%q: parse error %v, want ok=%v", tc.line, err, tc.ok)
		}
	}
}

// TestParseRefusesBadHost: a Host field net/http's server refuses is
// malformed on the loop too.
func TestParseRefusesBadHost(t *testing.T) {
	for _, tc := range []struct {
		host string
		ok   bool
	}{
		{"a b", false},
		{"a\"b", false},
		{"a/b", false},
		{"caf\xc3\xa9", false},
		{"a@b", false},
		{"", true},
		{"store1.example:8080", true},
		{"[fe80::1%25eth0]:80", true},
	} {
		var r Request
		err := r.parse([]byte("GET / HTTP/1.1\r\nHost: " + tc.host + "\r\n\r\n"))
		if (err == nil) != tc.ok {
			t.Errorf("Host %q: parse error %v, want ok=%v", tc.host, err, tc.ok)
		}
	}
}

// TestPeekEmptyField: a field that is there with an empty value is told
// apart from one that is not there.
func TestPeekEmptyField(t *testing.T) {
	var r Request
	if err := r.parse([]byte("GET / HTTP/1.1\r\nHost: a\r\nRange:\r\nIf-None-Match: \t \r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"Range", "If-None-Match"} {
		if v := r.Peek(name); v == nil || len(v) != 0 {
			t.Errorf("Peek(%q) = %q (nil %v), want an empty value", name, v, v == nil)
		}
	}
	if v := r.Peek("If-Match"); v != nil {
		t.Errorf("Peek of a field not sent: %q", v)
	}
}
