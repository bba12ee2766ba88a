//go:build linux

package evloop

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// connHarness is a server whose handler answers /l… on the loop and
// /b… off it (Blocked first), and whose fallback answers the rest, each
// noting the request it answered.
type connHarness struct {
	addr string
	mu   sync.Mutex
	seen []string // "METHOD target" of each request answered, in order
}

func (h *connHarness) note(method, target string) {
	h.mu.Lock()
	h.seen = append(h.seen, method+" "+target)
	h.mu.Unlock()
}

func newConnHarness(f *testing.F) *connHarness {
	h := &connHarness{}
	handler := func(req *Request, a *Answer, mayBlock bool) Result {
		switch {
		case bytes.HasPrefix(req.Target, []byte("/b")) && !mayBlock:
			return Blocked
		case bytes.HasPrefix(req.Target, []byte("/l")), bytes.HasPrefix(req.Target, []byte("/b")):
			h.note(string(req.Method), string(req.Target))
			return echoHandler(req, a, mayBlock)
		}
		return Declined
	}
	fb := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.note(r.Method, r.RequestURI)
		fmt.Fprintf(w, "%s %s", r.Method, r.RequestURI)
	})
	srv, err := New(handler, fb, Options{Loops: 1, Workers: 4})
	if err != nil {
		f.Fatal(err)
	}
	h.addr = listenFor(f, srv, nil).Addr().String()
	return h
}

// netHTTPRequests returns "METHOD target" of the requests net/http's
// server reads from data, one after the other, up to the first it
// refuses or the first with a body (which the loop refuses, ending the
// connection). As that server, it skips the CR and LF bytes among the
// first four after a POST, and no others.
func netHTTPRequests(data []byte) []string {
	var reqs []string
	br := bufio.NewReader(bytes.NewReader(data))
	for {
		if len(reqs) > 0 && strings.HasPrefix(reqs[len(reqs)-1], "POST ") {
			peek, _ := br.Peek(4)
			n := 0
			for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
				n++
			}
			br.Discard(n)
		}
		if _, err := br.Peek(1); err != nil {
			return reqs
		}
		// The request's line and fields, for netHTTPServerStatus.
		head, _ := br.Peek(br.Buffered())
		if end := bytes.Index(head, crlf2); end >= 0 {
			head = head[:end+4]
		}
		head = bytes.Clone(head)
		hr, err := http.ReadRequest(br)
		if err != nil || netHTTPServerStatus(hr, head) != 0 || hr.ContentLength != 0 || len(hr.TransferEncoding) > 0 {
			return reqs
		}
		reqs = append(reqs, hr.Method+" "+hr.RequestURI)
	}
}

// FuzzConn sends any bytes on a connection and checks what comes back:
// every answer is well-formed HTTP; the requests answered are the ones
// net/http reads from the same bytes, in order, up to where the loop
// stops (it may refuse earlier, never read on past net/http or read a
// request net/http would not); at most one error answer follows them,
// then the connection ends.
func FuzzConn(f *testing.F) {
	for _, s := range hostileRequests {
		f.Add([]byte(s))
		f.Add([]byte(strings.Replace(s, " / ", " /l ", 1) + "GET /b1 HTTP/1.1\r\nHost: a\r\n\r\n"))
	}
	f.Add([]byte("GET /l1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /b2 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /f3 HTTP/1.1\r\nHost: a\r\n\r\nGET /l4 HTTP/1.0\r\n\r\nGET /l5 HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Add([]byte("GET /l1 HTTP/1.1\r\nHost: a\r\n\r\nGET /b2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nGET /l3 HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Add([]byte("GET /l1 HTTP/1.1\r\nHost: a\r\n\r\nGET /f2 HTTP/1.1\r\nHost: a\r\n\r\nGET /l3 HTTP/1.1\r\nHost: a"))
	f.Add([]byte("POST /l1 HTTP/1.1\r\nHost: a\r\n\r\n\r\n\r\nPOST /f2 HTTP/1.1\r\nHost: a\r\n\r\n\n\r\nGET /b3 HTTP/1.2\r\nHost: a\r\n\r\n\r\nGET /l4 HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Add([]byte("GET /f1 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\nGET /l2 HTTP/1.1\r\nHost: a\r\nExpect: x\r\n\r\nGET /l3 HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Add([]byte("GET /l1 HTTP/1.9\r\nHost: a\r\n\r\nGET /f2 HTTP/2.0\r\nHost: a\r\n\r\nGET /l3 HTTP/1.1\r\nHost: a\r\n\r\n"))
	h := newConnHarness(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		h.mu.Lock()
		h.seen = h.seen[:0]
		h.mu.Unlock()
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A bound on an iteration that would otherwise hang, not a
		// timing assertion: a hang fails it.
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			c.Write(data)
			c.(*net.TCPConn).CloseWrite()
		}()
		answers, err := io.ReadAll(c)
		if err != nil && !isReset(err) {
			t.Fatalf("reading the answers: %v", err)
		}
		h.mu.Lock()
		seen := append([]string(nil), h.seen...)
		h.mu.Unlock()
		want := netHTTPRequests(data)
		if len(seen) > len(want) {
			t.Fatalf("the server answered %q; net/http reads only %q", seen, want)
		}
		for i := range seen {
			if seen[i] != want[i] {
				t.Fatalf("request %d answered as %q; net/http reads %q", i, seen[i], want[i])
			}
		}
		br := bufio.NewReader(bytes.NewReader(answers))
		for i := 0; ; i++ {
			if _, err := br.Peek(1); err != nil {
				break // the end of the answers
			}
			method := "GET"
			if i < len(seen) {
				method, _, _ = strings.Cut(seen[i], " ")
			}
			resp, err := http.ReadResponse(br, &http.Request{Method: method})
			if err != nil {
				t.Fatalf("answer %d (of %d requests answered) is malformed: %v\n%q", i, len(seen), err, answers)
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("answer %d: body: %v", i, err)
			}
			if i < len(seen) {
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("answer %d to %q: status %d", i, seen[i], resp.StatusCode)
				}
				if method != "HEAD" && string(b) != seen[i] {
					t.Fatalf("answer %d to %q: body %q", i, seen[i], b)
				}
				continue
			}
			switch resp.StatusCode {
			case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusRequestHeaderFieldsTooLarge,
				http.StatusExpectationFailed, http.StatusHTTPVersionNotSupported:
			default:
				t.Fatalf("answer %d with no request answered: status %d", i, resp.StatusCode)
			}
			if !resp.Close {
				t.Fatalf("error answer %d does not close the connection", i)
			}
			if br.Buffered() > 0 {
				t.Fatalf("bytes after the error answer: %q", answers)
			}
			break
		}
	})
}
