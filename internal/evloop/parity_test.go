//go:build linux

package evloop

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// parityFallback answers every request with "METHOD target", and /hdr
// with header changes made after the status is written.
var parityFallback = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/hdr/write-header": // the map held from before WriteHeader
		h := w.Header()
		h.Set("X-Before", "1")
		w.WriteHeader(http.StatusAccepted)
		h.Set("X-After", "1")
		w.Header().Set("X-After-2", "1")
		io.WriteString(w, "body")
	case "/hdr/write": // the status written by the first Write
		w.Header().Set("X-Before", "1")
		io.WriteString(w, "body")
		w.Header().Set("X-After", "1")
		w.Header().Set("Content-Type", "text/x-late")
	case "/hdr/late": // Header first called after WriteHeader
		w.WriteHeader(http.StatusOK)
		w.Header().Set("X-After", "1")
		io.WriteString(w, "body")
	default:
		fmt.Fprintf(w, "%s %s", r.Method, r.RequestURI)
	}
})

// parityHandler answers /l… on the loop, as the fallback answers it, and
// declines the rest.
func parityHandler(req *Request, a *Answer, mayBlock bool) Result {
	if bytes.HasPrefix(req.Target, []byte("/l")) {
		a.Header("Content-Type", []byte("text/plain; charset=utf-8"))
		return echoHandler(req, a, mayBlock)
	}
	return Declined
}

// parityAnswer is what a client reads of an answer.
type parityAnswer struct {
	proto  string
	status int
	body   string
	hdr    string // the X- fields and Content-Type, sorted
	close  bool
}

// readAnswers sends raw on c, closes c's writing side, and reads every
// answer until the connection ends.
func readAnswers(t *testing.T, c net.Conn, raw string) []parityAnswer {
	t.Helper()
	// A bound on a test that would otherwise hang, not a timing
	// assertion.
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	var got []parityAnswer
	br := bufio.NewReader(c)
	for {
		if _, err := br.Peek(1); err != nil {
			return got
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("answer %d: %v", len(got), err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil && !isReset(err) {
			t.Fatalf("answer %d: body: %v", len(got), err)
		}
		var hdr []string
		for _, k := range []string{"X-Before", "X-After", "X-After-2", "Content-Type"} {
			if v := resp.Header.Get(k); v != "" {
				hdr = append(hdr, k+"="+v)
			}
		}
		a := parityAnswer{status: resp.StatusCode, close: resp.Close}
		if resp.StatusCode < 300 {
			// Error answers differ: JSON on the loops, and always in an
			// HTTP/1.1 status line (RFC 9110, 6.2).
			a.proto, a.body, a.hdr = resp.Proto, string(b), strings.Join(hdr, " ")
		}
		got = append(got, a)
	}
}

// TestNetHTTPParity sends the same bytes to the loops and to net/http's
// server with the same handler, and checks that the answers are the same:
// status, protocol, body and the fields the handler set. It covers the
// Expect field (417 for anything but 100-continue), HTTP/1.x versions
// above 1.1 (served as 1.1; another major: 505), the CR and LF bytes
// skipped before a request (after a POST only, four at most), and header
// changes made after the status is written (not sent).
func TestNetHTTPParity(t *testing.T) {
	ref := httptest.NewServer(parityFallback)
	defer ref.Close()
	dial := serveWith(t, parityHandler, parityFallback)
	const host = "Host: a\r\n"
	for _, raw := range []string{
		// Expect.
		"GET /f HTTP/1.1\r\n" + host + "Expect: foo\r\n\r\nGET /f HTTP/1.1\r\n" + host + "\r\n",
		"GET /l HTTP/1.1\r\n" + host + "Expect: foo\r\n\r\nGET /l HTTP/1.1\r\n" + host + "\r\n",
		"GET /l HTTP/1.1\r\n" + host + "Expect: 100-continue\r\n\r\nGET /f HTTP/1.1\r\n" + host + "Expect: 100-CONTINUE\r\n\r\n",
		"GET /f HTTP/1.1\r\n" + host + "Expect: foo, 100-continue\r\n\r\n",
		"GET /f HTTP/1.1\r\n" + host + "Expect: 100-continued\r\n\r\n",
		"GET /l HTTP/1.1\r\n" + host + "Expect:\r\nExpect: foo\r\n\r\nGET /l HTTP/1.1\r\n" + host + "\r\n",
		"GET /l HTTP/1.1\r\n" + host + "Expect: 100-continue\r\nExpect: foo\r\n\r\n",
		"GET /l HTTP/1.0\r\nExpect: foo\r\n\r\n",
		"POST /f HTTP/1.1\r\n" + host + "Expect: foo\r\nContent-Length: 3\r\n\r\nabc",
		// Versions.
		"GET /l HTTP/1.2\r\n" + host + "\r\nGET /f HTTP/1.9\r\n" + host + "\r\nGET /l HTTP/1.1\r\n" + host + "\r\n",
		"GET /f HTTP/1.2\r\n" + host + "Connection: close\r\n\r\nGET /f HTTP/1.1\r\n" + host + "\r\n",
		"GET /f HTTP/1.2\r\n\r\n",
		"GET /l HTTP/2.0\r\n" + host + "\r\n",
		"GET /f HTTP/0.9\r\n\r\n",
		"GET /f HTTP/3.1\r\n\r\n",
		"GET /f HTTP/1.10\r\n" + host + "\r\n",
		"GET /f HTTP/1.a\r\n" + host + "\r\n",
		"GET /f HTTP/2.0\r\n" + host + "Bad Name: 1\r\n\r\n",
		"GET /f HTTP/2.0\r\nHost: a b\r\n\r\n",
		"GET /f HTTP/1.1\r\nHost: a b\r\nExpect: foo\r\n\r\n",
		"GET /f HTTP/1.1\r\n" + host + "Bad Name: 1\r\nExpect: foo\r\n\r\n",
		"GET /f HTTP/1.1\r\nExpect: foo\r\n\r\n",
		// CR and LF before a request.
		"\r\nGET /f HTTP/1.1\r\n" + host + "\r\n",
		"\r\n\r\nGET /l HTTP/1.1\r\n" + host + "\r\n",
		"GET /l HTTP/1.1\r\n" + host + "\r\n\r\nGET /l HTTP/1.1\r\n" + host + "\r\n",
		"POST /f HTTP/1.1\r\n" + host + "\r\n\r\n\r\nGET /l HTTP/1.1\r\n" + host + "\r\n",
		"POST /l HTTP/1.1\r\n" + host + "\r\n\n\r\nGET /f HTTP/1.1\r\n" + host + "\r\n",
		"POST /f HTTP/1.1\r\n" + host + "Content-Length: 0\r\n\r\n\r\n\r\n\r\nGET /f HTTP/1.1\r\n" + host + "\r\n",
		"POST /l HTTP/1.1\r\n" + host + "\r\n\nGET /f HTTP/1.1\r\n" + host + "\r\n\r\nGET /f HTTP/1.1\r\n" + host + "\r\n",
		// Header changes after the status.
		"GET /hdr/write-header HTTP/1.1\r\n" + host + "\r\nGET /hdr/write HTTP/1.1\r\n" + host + "\r\nGET /hdr/late HTTP/1.1\r\n" + host + "\r\n",
	} {
		rc, err := net.Dial("tcp", ref.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		want := readAnswers(t, rc, raw)
		rc.Close()
		got := readAnswers(t, dial(), raw)
		if len(want) == 0 {
			t.Fatalf("%q: net/http answered nothing", raw)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%q:\n loops   %+v\n net/http %+v", raw, got, want)
		}
	}
}

// TestSkipBlank: the CR and LF bytes skipped before a request are those
// among the first four after a POST, however the bytes arrive.
func TestSkipBlank(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		budget int
		skip   []int
	}{
		{[]string{"\r\nGET"}, 0, []int{0}},
		{[]string{"\r\n\r\nGET"}, 4, []int{4}},
		{[]string{"\r\n\r\n\r\nGET"}, 4, []int{4}},
		{[]string{"\n\nGET"}, 4, []int{2}},
		{[]string{"\r", "\n", "\r\n", "\r\n"}, 4, []int{1, 1, 2, 0}},
		{[]string{"\r\n", "G"}, 4, []int{2, 0}},
		{[]string{"G", "\r\n"}, 4, []int{0, 0}},
	} {
		budget := tc.budget
		for i, ch := range tc.chunks {
			if n := skipBlank([]byte(ch), &budget); n != tc.skip[i] {
				t.Errorf("%q budget %d: chunk %d skips %d, want %d", tc.chunks, tc.budget, i, n, tc.skip[i])
			}
		}
	}
}
