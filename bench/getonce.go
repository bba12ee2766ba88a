package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// GetOnceConfig configures RunGetOnce.
type GetOnceConfig struct {
	// Addr is the server's TCP address, host:port. Required.
	Addr string
	// Host is the Host header of every request; empty means Addr.
	Host string
	// Paths are the request targets, each an absolute path ("/p/..."),
	// each requested exactly once, in this order as the connections free
	// up. Required.
	Paths []string
	// Conns is the number of keep-alive connections, each with one
	// request in flight at a time: the queue depth the server sees.
	// Required (at least 1).
	Conns int
	// MaxErrors is how many error causes the result keeps (the first
	// ones); default 10.
	MaxErrors int
}

// GetOnceError is one failed request: its path and why it failed.
type GetOnceError struct {
	Path string
	Err  error
}

func (e GetOnceError) Error() string { return e.Path + ": " + e.Err.Error() }

// GetOnceResult is what RunGetOnce measured.
type GetOnceResult struct {
	// Requests is the paths taken, each requested once; a request whose
	// connect or write failed counts here and as a socket error.
	Requests int64
	// Answers is the complete 200 answers, every body byte received.
	Answers int64
	// StatusErrors is the complete answers with another status.
	StatusErrors int64
	// SocketErrors is the requests whose connect, write or read failed,
	// including a connection closed or reset before the whole answer.
	SocketErrors int64
	// AnswerErrors is the answers the client could not take: without a
	// Content-Length, chunked, with a malformed status line or header,
	// a header block over the client's buffer, or more bytes than the
	// Content-Length. The connection is dropped after each.
	AnswerErrors int64
	// Bytes is every byte received, header blocks and bodies, as the
	// kernel counted them.
	Bytes int64
	// Elapsed runs from the first request to the last answer (or the
	// last failure, when a request failed after every answer).
	Elapsed time.Duration
	// Rate is Requests / Elapsed.
	Rate float64
	// CPU is the client process's own user and system time over the run
	// (getrusage RUSAGE_SELF), and CPUPerRequest that over Requests; both
	// zero where the platform does not tell (CPUKnown false).
	CPU           time.Duration
	CPUPerRequest time.Duration
	CPUKnown      bool
	// Errors are the first failed requests (up to MaxErrors) with their
	// causes.
	Errors []GetOnceError
	// Unfinished is set when the context ended the run before every path
	// was requested and answered.
	Unfinished bool
}

// Failed is the number of requests that did not end in a 200 answer.
func (r *GetOnceResult) Failed() int64 {
	return r.StatusErrors + r.SocketErrors + r.AnswerErrors
}

// OnceLine is the summary line that bench/wrk-once.lua prints, with the
// same fields in the same order, so one parser reads either:
//
//	once: requests N answers N status_errors N socket_errors N timeouts N bytes N elapsed_s S rate R
//
// Answers the client could not take are counted with the socket errors,
// as wrk counts an answer it cannot parse as a read error; there are no
// timeouts (the run ends with its context). An unfinished run prints
// "elapsed_s unfinished rate 0", as wrk-once.lua does.
func (r *GetOnceResult) OnceLine() string {
	line := fmt.Sprintf("once: requests %d answers %d status_errors %d socket_errors %d timeouts 0 bytes %d",
		r.Requests, r.Answers, r.StatusErrors, r.SocketErrors+r.AnswerErrors, r.Bytes)
	if r.Unfinished || r.Elapsed <= 0 {
		return line + " elapsed_s unfinished rate 0"
	}
	return line + fmt.Sprintf(" elapsed_s %.4f rate %.1f", r.Elapsed.Seconds(), r.Rate)
}

// errAnswer marks an answer the client cannot take (see AnswerErrors).
var errAnswer = errors.New("answer not taken")

// errStatus marks a complete answer with a status other than 200.
var errStatus = errors.New("status")

// headerBufSize bounds an answer's status line and headers.
const headerBufSize = 4096

// RunGetOnce GETs every path of cfg.Paths exactly once from cfg.Addr over
// cfg.Conns keep-alive HTTP/1.1 connections, one request in flight per
// connection, each connection taking the next path when its previous
// answer is in. It reads each answer's header block into a small buffer
// and discards the body (on Linux without copying it out of the kernel),
// so that the client's CPU per answer stays small next to the server's.
//
// An answer is taken only with a Content-Length: a chunked answer or one
// without it is an error, as is a status other than 200 (its body is
// skipped and the connection kept). A connection closed or reset before
// the whole answer is a socket error; it reconnects for its next path
// and the failed path is not requested again. When ctx ends, the run
// stops at once and returns what it has with ctx's error.
func RunGetOnce(ctx context.Context, cfg GetOnceConfig) (*GetOnceResult, error) {
	if cfg.Addr == "" {
		return nil, errors.New("get-once: no server address")
	}
	if cfg.Conns < 1 {
		return nil, fmt.Errorf("get-once: %d connections: want at least 1", cfg.Conns)
	}
	if len(cfg.Paths) == 0 {
		return nil, errors.New("get-once: no paths")
	}
	host := cfg.Host
	if host == "" {
		host = cfg.Addr
	}
	if err := checkHeaderValue(host); err != nil {
		return nil, fmt.Errorf("get-once: Host %q: %w", host, err)
	}
	reqs := make([][]byte, len(cfg.Paths))
	for i, p := range cfg.Paths {
		if err := checkTarget(p); err != nil {
			return nil, fmt.Errorf("get-once: path %d %q: %w", i+1, p, err)
		}
		reqs[i] = []byte("GET " + p + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n")
	}
	maxErrors := cfg.MaxErrors
	if maxErrors <= 0 {
		maxErrors = 10
	}
	conns := min(cfg.Conns, len(cfg.Paths))

	// Connect every connection before the clock starts: the run measures
	// answers, not handshakes.
	ws := make([]*getOnceConn, conns)
	defer func() {
		for _, w := range ws {
			if w != nil {
				w.close()
			}
		}
	}()
	for i := range ws {
		w := &getOnceConn{ctx: ctx, addr: cfg.Addr}
		w.readFn = w.recvDiscard
		if err := w.dial(); err != nil {
			return nil, fmt.Errorf("get-once: connect to %s: %w", cfg.Addr, err)
		}
		ws[i] = w
	}

	run := &getOnceRun{paths: cfg.Paths, reqs: reqs, maxErrors: maxErrors}
	cpu0, cpuKnown := processCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(run)
		}()
	}
	wg.Wait()
	cpu1, _ := processCPU()

	res := &GetOnceResult{Errors: run.errs, CPUKnown: cpuKnown}
	var last time.Time
	for _, w := range ws {
		res.Requests += w.requests
		res.Answers += w.answers
		res.StatusErrors += w.statusErrs
		res.SocketErrors += w.socketErrs
		res.AnswerErrors += w.answerErrs
		res.Bytes += w.bytes
		if w.last.After(last) {
			last = w.last
		}
	}
	if res.Requests > 0 && !last.IsZero() {
		res.Elapsed = last.Sub(start)
		res.Rate = float64(res.Requests) / res.Elapsed.Seconds()
	}
	if cpuKnown {
		res.CPU = cpu1 - cpu0
		if res.Requests > 0 {
			res.CPUPerRequest = res.CPU / time.Duration(res.Requests)
		}
	}
	if err := ctx.Err(); err != nil {
		res.Unfinished = res.Requests < int64(len(cfg.Paths)) || res.Answers+res.Failed() < res.Requests
		if res.Unfinished {
			return res, fmt.Errorf("get-once: stopped after %d of %d requests: %w", res.Requests, len(cfg.Paths), err)
		}
	}
	return res, nil
}

// getOnceRun is what a run's connections share.
type getOnceRun struct {
	paths     []string
	reqs      [][]byte
	next      atomic.Int64
	maxErrors int

	mu   sync.Mutex
	errs []GetOnceError
}

func (r *getOnceRun) fail(path string, err error) {
	r.mu.Lock()
	if len(r.errs) < r.maxErrors {
		r.errs = append(r.errs, GetOnceError{Path: path, Err: err})
	}
	r.mu.Unlock()
}

// getOnceConn is one connection of a run and its counts.
type getOnceConn struct {
	ctx  context.Context
	addr string
	conn *net.TCPConn
	raw  syscall.RawConn
	stop func() bool // undoes the close on ctx's end

	hdr [headerBufSize]byte

	// The discard in progress (Linux): recvDiscard's arguments and
	// results, kept here so that readFn, made once, needs no closure.
	readFn  func(fd uintptr) bool
	want    int
	got     int
	readErr error

	requests, answers, statusErrs, socketErrs, answerErrs, bytes int64
	last                                                         time.Time
}

func (w *getOnceConn) dial() error {
	var d net.Dialer
	c, err := d.DialContext(w.ctx, "tcp", w.addr)
	if err != nil {
		return err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return fmt.Errorf("%s is not a TCP connection", w.addr)
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		c.Close()
		return err
	}
	w.conn, w.raw = tc, raw
	// Closing the connection is what ends a blocked read or write when
	// the context ends.
	w.stop = context.AfterFunc(w.ctx, func() { tc.Close() })
	return nil
}

func (w *getOnceConn) close() {
	if w.conn == nil {
		return
	}
	w.stop()
	w.conn.Close()
	w.conn, w.raw = nil, nil
}

// run takes paths until none is left or the context ends.
func (w *getOnceConn) run(r *getOnceRun) {
	for w.ctx.Err() == nil {
		i := r.next.Add(1) - 1
		if i >= int64(len(r.paths)) {
			return
		}
		w.requests++
		keep, err := w.get(r.reqs[i])
		if !keep {
			w.close()
		}
		switch {
		case err == nil:
			w.answers++
			w.last = time.Now()
		case w.ctx.Err() != nil:
			// Stopped: this request is neither answered nor failed.
			return
		case errors.Is(err, errStatus):
			w.statusErrs++
			w.last = time.Now()
			r.fail(r.paths[i], err)
		case errors.Is(err, errAnswer):
			w.answerErrs++
			w.last = time.Now()
			r.fail(r.paths[i], err)
		default:
			w.socketErrs++
			w.last = time.Now()
			r.fail(r.paths[i], err)
		}
	}
}

// get sends one request and reads its answer whole. keep says whether the
// connection may carry the next request.
func (w *getOnceConn) get(req []byte) (keep bool, err error) {
	if w.conn == nil {
		if err := w.dial(); err != nil {
			return false, fmt.Errorf("connect: %w", err)
		}
	}
	if _, err := w.conn.Write(req); err != nil {
		return false, fmt.Errorf("write: %w", err)
	}
	// The header block, and whatever of the body came with it.
	n := 0
	end := -1
	for end < 0 {
		if n == len(w.hdr) {
			return false, fmt.Errorf("%w: header block over %d bytes", errAnswer, len(w.hdr))
		}
		k, err := w.conn.Read(w.hdr[n:])
		w.bytes += int64(k)
		if k == 0 && err != nil {
			if err == io.EOF {
				if n == 0 {
					return false, errors.New("read: connection closed before the answer")
				}
				return false, errors.New("read: connection closed in the header block")
			}
			return false, fmt.Errorf("read: %w", err)
		}
		from := max(n-3, 0)
		n += k
		if i := bytes.Index(w.hdr[from:n], []byte("\r\n\r\n")); i >= 0 {
			end = from + i + 4
		}
	}
	h, err := parseAnswerHeader(w.hdr[:end])
	if err != nil {
		return false, fmt.Errorf("%w: %w", errAnswer, err)
	}
	rest := h.length - int64(n-end)
	if rest < 0 {
		return false, fmt.Errorf("%w: %d bytes after the header block, Content-Length %d", errAnswer, n-end, h.length)
	}
	if rest > 0 {
		got, err := w.discard(rest)
		w.bytes += got
		if err != nil {
			return false, fmt.Errorf("read: %d of %d body bytes: %w", h.length-rest+got, h.length, err)
		}
	}
	if h.status != 200 {
		return !h.close, fmt.Errorf("%w %d", errStatus, h.status)
	}
	return !h.close, nil
}

// answerHeader is what the client takes from an answer's header block.
type answerHeader struct {
	status int
	length int64
	close  bool // Connection: close
}

// parseAnswerHeader reads an HTTP/1.x status line and header fields
// (block, ending with the blank line): the status, the Content-Length
// (required, one value), whether the server closes the connection. A
// Transfer-Encoding is refused: its answers have no length up front.
func parseAnswerHeader(block []byte) (answerHeader, error) {
	h := answerHeader{length: -1}
	line, rest, _ := bytes.Cut(block, []byte("\r\n"))
	// "HTTP/1.1 200 OK": version, space, three digits, then a space or
	// the end of the line.
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return h, fmt.Errorf("malformed status line %q", trimForError(line))
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil || code < 100 {
		return h, fmt.Errorf("malformed status line %q", trimForError(line))
	}
	h.status = code
	if line[7] == '0' {
		h.close = true // HTTP/1.0 closes unless told otherwise
	}
	for {
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t") {
			return h, fmt.Errorf("malformed header line %q", trimForError(line))
		}
		value = bytes.TrimSpace(value)
		switch {
		case asciiEqualFold(name, "content-length"):
			v, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || v < 0 || value[0] == '+' {
				return h, fmt.Errorf("malformed Content-Length %q", trimForError(value))
			}
			if h.length >= 0 && h.length != v {
				return h, fmt.Errorf("two Content-Lengths, %d and %d", h.length, v)
			}
			h.length = v
		case asciiEqualFold(name, "transfer-encoding"):
			return h, fmt.Errorf("Transfer-Encoding %q: the client takes only answers with a Content-Length", trimForError(value))
		case asciiEqualFold(name, "connection"):
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				tok = bytes.TrimSpace(tok)
				if asciiEqualFold(tok, "close") {
					h.close = true
				} else if asciiEqualFold(tok, "keep-alive") {
					h.close = false
				}
			}
		}
	}
	if h.length < 0 {
		// 1xx, 204 and 304 answers have no body, but no GET of an image
		// should get one; they are errors like any other without a length.
		return h, fmt.Errorf("status %d without a Content-Length", h.status)
	}
	return h, nil
}

// asciiEqualFold reports whether b is s, ignoring ASCII case (s lower case).
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func trimForError(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

// checkTarget refuses a request target that is not an absolute path or
// that would break the request line.
func checkTarget(p string) error {
	if len(p) == 0 || p[0] != '/' {
		return errors.New("not an absolute path (want /...)")
	}
	for i := range len(p) {
		if p[i] <= ' ' || p[i] == 0x7f {
			return fmt.Errorf("control character or space at byte %d", i)
		}
	}
	return nil
}

// checkHeaderValue refuses a header value that would break the request.
func checkHeaderValue(v string) error {
	for i := range len(v) {
		if v[i] < ' ' || v[i] == 0x7f {
			return fmt.Errorf("control character at byte %d", i)
		}
	}
	return nil
}
