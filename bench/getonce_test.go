package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// onceServer is a raw HTTP/1.1 server for RunGetOnce's tests: it counts
// the requests of every path and the connections, and answers each
// request with what answer returns for its path, counting the bytes it
// writes. answer's close makes it close the connection after writing.
type onceServer struct {
	ln     net.Listener
	answer func(path string) (resp []byte, close bool)
	// dribble, when set, writes each answer's first dribble bytes one at
	// a time, a millisecond apart, so that the client reads the header
	// block in pieces.
	dribble atomic.Int64

	mu    sync.Mutex
	count map[string]int
	conns int
	sent  int64
	wg    sync.WaitGroup
}

func newOnceServer(t *testing.T, answer func(path string) ([]byte, bool)) *onceServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &onceServer{ln: ln, answer: answer, count: map[string]int{}}
	var open sync.Map
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			open.Store(c, true)
			s.mu.Lock()
			s.conns++
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				defer open.Delete(c)
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					s.mu.Lock()
					s.count[req.URL.Path]++
					s.mu.Unlock()
					resp, closeAfter := s.answer(req.URL.Path)
					if resp == nil {
						// Never answer: wait for the client to go away.
						io.Copy(io.Discard, br)
						return
					}
					// Counted before the write: the client may have read it
					// all before Write returns.
					s.mu.Lock()
					s.sent += int64(len(resp))
					s.mu.Unlock()
					for range min(int(s.dribble.Load()), len(resp)) {
						if _, err := c.Write(resp[:1]); err != nil {
							return
						}
						resp = resp[1:]
						time.Sleep(time.Millisecond)
					}
					if _, err := c.Write(resp); err != nil || closeAfter {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		open.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
		s.wg.Wait()
	})
	return s
}

func (s *onceServer) addr() string { return s.ln.Addr().String() }

// okAnswer is a 200 answer with a body of n bytes whose last byte is 'Z'
// (so that a body read one byte short leaves it for the next answer).
func okAnswer(n int) []byte {
	body := make([]byte, n)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	if n > 0 {
		body[n-1] = 'Z'
	}
	return append(fmt.Appendf(nil, "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n", n), body...)
}

// testCtx bounds a run, so that a client that waits for bytes that never
// come fails the test instead of hanging it.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testPaths(n int) []string {
	ps := make([]string, n)
	for i := range ps {
		ps[i] = fmt.Sprintf("/p/%d/m", i)
	}
	return ps
}

// bodySize varies the answers: small, around a header buffer, and large
// enough to take several reads.
func bodySize(path string) int {
	var i int
	fmt.Sscanf(path, "/p/%d/", &i)
	return []int{1, 5000, 4000, 0, 150_000, 1_300_000, 77}[i%7]
}

func checkOnce(t *testing.T, s *onceServer, paths []string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range paths {
		if s.count[p] != 1 {
			t.Errorf("%s requested %d times, want once", p, s.count[p])
		}
	}
	if len(s.count) != len(paths) {
		t.Errorf("server saw %d distinct paths, want %d", len(s.count), len(paths))
	}
}

// TestGetOnceEveryPathOnce: every path requested exactly once, at several
// connection counts, with more and fewer paths than connections; the
// answers and bytes are what the server sent, over no more connections
// than asked for (keep-alive holds: the bodies were consumed exactly).
func TestGetOnceEveryPathOnce(t *testing.T) {
	for _, conns := range []int{1, 3, 16} {
		for _, n := range []int{1, 2, 15, 40} {
			t.Run(fmt.Sprintf("c%d-n%d", conns, n), func(t *testing.T) {
				s := newOnceServer(t, func(p string) ([]byte, bool) { return okAnswer(bodySize(p)), false })
				paths := testPaths(n)
				res, err := RunGetOnce(testCtx(t), GetOnceConfig{Addr: s.addr(), Paths: paths, Conns: conns})
				if err != nil {
					t.Fatal(err)
				}
				checkOnce(t, s, paths)
				if res.Requests != int64(n) || res.Answers != int64(n) || res.Failed() != 0 {
					t.Errorf("requests %d answers %d failed %d (%v), want %d, %d, 0", res.Requests, res.Answers, res.Failed(), res.Errors, n, n)
				}
				s.mu.Lock()
				sent, opened := s.sent, s.conns
				s.mu.Unlock()
				if res.Bytes != sent {
					t.Errorf("bytes %d, server sent %d", res.Bytes, sent)
				}
				if want := min(conns, n); opened != want {
					t.Errorf("%d connections opened, want %d", opened, want)
				}
				if res.Elapsed <= 0 || res.Rate <= 0 {
					t.Errorf("elapsed %v rate %v", res.Elapsed, res.Rate)
				}
				line := res.OnceLine()
				want := fmt.Sprintf("once: requests %d answers %d status_errors 0 socket_errors 0 timeouts 0 bytes %d elapsed_s ", n, n, sent)
				if !strings.HasPrefix(line, want) || len(strings.Fields(line)) != 17 {
					t.Errorf("once line %q, want it to start %q and have 17 fields", line, want)
				}
			})
		}
	}
}

// TestGetOnceDiscardExact: over one connection, answers of many sizes in
// a row, each answer's body discarded exactly: one byte too few or too
// many and the next answer's status line would not parse.
func TestGetOnceDiscardExact(t *testing.T) {
	sizes := []int{0, 1, 4095, 4096, 4097, 65536, 65537, 1 << 20, (1 << 20) + 1, 3 << 20, 3, 200_000}
	s := newOnceServer(t, func(p string) ([]byte, bool) {
		var i int
		fmt.Sscanf(p, "/p/%d/", &i)
		return okAnswer(sizes[i]), false
	})
	paths := testPaths(len(sizes))
	res, err := RunGetOnce(testCtx(t), GetOnceConfig{Addr: s.addr(), Paths: paths, Conns: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Answers != int64(len(sizes)) || res.Failed() != 0 {
		t.Fatalf("answers %d failed %d (%v), want %d and 0", res.Answers, res.Failed(), res.Errors, len(sizes))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns != 1 {
		t.Errorf("%d connections, want 1", s.conns)
	}
	if res.Bytes != s.sent {
		t.Errorf("bytes %d, server sent %d", res.Bytes, s.sent)
	}
}

// TestGetOnceHeaderInPieces: a header block that arrives a byte at a time
// is put together across reads, its end found wherever it falls.
func TestGetOnceHeaderInPieces(t *testing.T) {
	s := newOnceServer(t, func(p string) ([]byte, bool) { return okAnswer(bodySize(p)), false })
	s.dribble.Store(90) // past the header block (66-70 bytes) into the body
	paths := testPaths(7)
	res, err := RunGetOnce(testCtx(t), GetOnceConfig{Addr: s.addr(), Paths: paths, Conns: 2})
	if err != nil {
		t.Fatal(err)
	}
	checkOnce(t, s, paths)
	s.mu.Lock()
	defer s.mu.Unlock()
	if res.Answers != 7 || res.Failed() != 0 || res.Bytes != s.sent {
		t.Errorf("answers %d failed %d (%v) bytes %d, want 7, 0 and %d", res.Answers, res.Failed(), res.Errors, res.Bytes, s.sent)
	}
}

// TestGetOnceStatusError: a 404 counts as a status error with its path,
// and the connection carries on.
func TestGetOnceStatusError(t *testing.T) {
	s := newOnceServer(t, func(p string) ([]byte, bool) {
		if p == "/p/3/m" {
			return []byte("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"error\":\"not found\"}"), false
		}
		return okAnswer(bodySize(p)), false
	})
	paths := testPaths(10)
	res, err := RunGetOnce(testCtx(t), GetOnceConfig{Addr: s.addr(), Paths: paths, Conns: 1})
	if err != nil {
		t.Fatal(err)
	}
	checkOnce(t, s, paths)
	if res.Answers != 9 || res.StatusErrors != 1 || res.SocketErrors != 0 || res.AnswerErrors != 0 {
		t.Errorf("answers %d status %d socket %d answer %d, want 9 1 0 0", res.Answers, res.StatusErrors, res.SocketErrors, res.AnswerErrors)
	}
	if len(res.Errors) != 1 || res.Errors[0].Path != "/p/3/m" || !strings.Contains(res.Errors[0].Error(), "404") {
		t.Errorf("errors %v, want /p/3/m with 404", res.Errors)
	}
	if !strings.Contains(res.OnceLine(), " status_errors 1 socket_errors 0 ") {
		t.Errorf("once line %q", res.OnceLine())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns != 1 || res.Bytes != s.sent {
		t.Errorf("%d connections and %d bytes, want 1 and %d", s.conns, res.Bytes, s.sent)
	}
}

// TestGetOnceClosedMidBody: a server that closes in the middle of a body
// gives a socket error for that path; the connection reconnects and the
// run finishes every other path, none twice.
func TestGetOnceClosedMidBody(t *testing.T) {
	s := newOnceServer(t, func(p string) ([]byte, bool) {
		a := okAnswer(bodySize(p))
		if p == "/p/4/m" || p == "/p/12/m" {
			return a[:len(a)-1000], true
		}
		return a, false
	})
	paths := testPaths(20)
	for _, conns := range []int{1, 3} {
		s.mu.Lock()
		clear(s.count)
		s.mu.Unlock()
		res, err := RunGetOnce(testCtx(t), GetOnceConfig{Addr: s.addr(), Paths: paths, Conns: conns})
		if err != nil {
			t.Fatal(err)
		}
		checkOnce(t, s, paths)
		if res.Requests != 20 || res.Answers != 18 || res.SocketErrors != 2 || res.StatusErrors+res.AnswerErrors != 0 {
			t.Errorf("conns %d: requests %d answers %d socket %d other %d, want 20 18 2 0", conns, res.Requests, res.Answers,
				res.SocketErrors, res.StatusErrors+res.AnswerErrors)
		}
		for _, e := range res.Errors {
			if e.Path != "/p/4/m" && e.Path != "/p/12/m" || !strings.Contains(e.Error(), "body bytes") {
				t.Errorf("conns %d: error %v, want a short body of /p/4/m or /p/12/m", conns, e)
			}
		}
	}
}

// TestGetOnceUntakenAnswers: chunked answers, answers without a
// Content-Length and malformed ones are errors with their causes; the
// client drops the connection after each and finishes the rest.
func TestGetOnceUntakenAnswers(t *testing.T) {
	bad := map[string]string{
		"/p/1/m": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"/p/2/m": "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n\r\nhello",
		"/p/3/m": "HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\nhello",
		"/p/4/m": "HTTX/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"/p/5/m": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"/p/6/m": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello",
	}
	causes := map[string]string{
		"/p/1/m": "Transfer-Encoding", "/p/2/m": "without a Content-Length", "/p/3/m": "malformed Content-Length",
		"/p/4/m": "malformed status line", "/p/5/m": "two Content-Lengths", "/p/6/m": "after the header block",
	}
	s := newOnceServer(t, func(p string) ([]byte, bool) {
		if b, ok := bad[p]; ok {
			return []byte(b), true
		}
		return okAnswer(bodySize(p)), false
	})
	paths := testPaths(12)
	res, err := RunGetOnce(testCtx(t), GetOnceConfig{Addr: s.addr(), Paths: paths, Conns: 2})
	if err != nil {
		t.Fatal(err)
	}
	checkOnce(t, s, paths)
	if res.Answers != 6 || res.AnswerErrors != 6 || res.SocketErrors+res.StatusErrors != 0 {
		t.Errorf("answers %d answer errors %d other %d, want 6 6 0 (%v)", res.Answers, res.AnswerErrors, res.SocketErrors+res.StatusErrors, res.Errors)
	}
	if len(res.Errors) != 6 {
		t.Fatalf("%d causes kept, want 6: %v", len(res.Errors), res.Errors)
	}
	for _, e := range res.Errors {
		if want, ok := causes[e.Path]; !ok || !strings.Contains(e.Err.Error(), want) {
			t.Errorf("error %v, want one of %q's (%q)", e, e.Path, want)
		}
	}
	if !strings.Contains(res.OnceLine(), " socket_errors 6 ") {
		t.Errorf("once line %q: answers not taken count with the socket errors", res.OnceLine())
	}
}

// TestGetOnceNeverAnswered: a server that never answers does not hold the
// run past its context; the result says it did not finish.
func TestGetOnceNeverAnswered(t *testing.T) {
	s := newOnceServer(t, func(p string) ([]byte, bool) {
		if p == "/p/2/m" {
			return nil, false
		}
		return okAnswer(bodySize(p)), false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan struct{})
	var res *GetOnceResult
	var err error
	go func() {
		res, err = RunGetOnce(ctx, GetOnceConfig{Addr: s.addr(), Paths: testPaths(5), Conns: 1})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("RunGetOnce still running a minute after its context ended")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the context's", err)
	}
	if res == nil || !res.Unfinished || res.Answers != 2 || !strings.HasSuffix(res.OnceLine(), "elapsed_s unfinished rate 0") {
		t.Fatalf("result %+v, want 2 answers and unfinished", res)
	}
}

// TestGetOnceNetHTTPServer: the answers of Go's own server (Date and
// other headers, several writes) are taken whole.
func TestGetOnceNetHTTPServer(t *testing.T) {
	var mu sync.Mutex
	count := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		count[r.URL.Path]++
		mu.Unlock()
		n := bodySize(r.URL.Path)
		w.Header().Set("Content-Length", fmt.Sprint(n))
		w.Write(okAnswer(n)[len(okAnswer(n))-n:])
	}))
	defer srv.Close()
	paths := testPaths(30)
	res, err := RunGetOnce(testCtx(t), GetOnceConfig{Addr: srv.Listener.Addr().String(), Paths: paths, Conns: 4})
	if err != nil {
		t.Fatal(err)
	}
	if res.Answers != 30 || res.Failed() != 0 {
		t.Fatalf("answers %d failed %d (%v)", res.Answers, res.Failed(), res.Errors)
	}
	var body int64
	for _, p := range paths {
		body += int64(bodySize(p))
		if count[p] != 1 {
			t.Errorf("%s requested %d times", p, count[p])
		}
	}
	if res.Bytes <= body || res.Bytes > body+30*300 {
		t.Errorf("bytes %d: want the bodies' %d and 30 header blocks", res.Bytes, body)
	}
}

// TestGetOnceBadConfig: bad input is refused with its cause, before any
// request.
func TestGetOnceBadConfig(t *testing.T) {
	for _, c := range []struct {
		cfg  GetOnceConfig
		want string
	}{
		{GetOnceConfig{Paths: []string{"/a"}, Conns: 1}, "no server address"},
		{GetOnceConfig{Addr: "127.0.0.1:1", Paths: []string{"/a"}}, "want at least 1"},
		{GetOnceConfig{Addr: "127.0.0.1:1", Conns: 1}, "no paths"},
		{GetOnceConfig{Addr: "127.0.0.1:1", Paths: []string{"/a", "b"}, Conns: 1}, "path 2"},
		{GetOnceConfig{Addr: "127.0.0.1:1", Paths: []string{"/a b"}, Conns: 1}, "space"},
	} {
		if _, err := RunGetOnce(testCtx(t), c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want %q", c.cfg, err, c.want)
		}
	}
}
