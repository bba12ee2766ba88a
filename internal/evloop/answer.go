package evloop

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// Result is what a Handler did with a request.
type Result int

const (
	// Answered: the Answer is filled in; the loop writes it.
	Answered Result = iota
	// Blocked: answering would wait for the disk (or the network); the
	// loop calls the Handler again off the loop, with mayBlock true, and
	// the Answer it was given is dropped.
	Blocked
	// Declined: the request is not the Handler's; the fallback
	// http.Handler answers it off the loop.
	Declined
)

// Handler answers a request on a loop. It is called on the loop with
// mayBlock false, where it must not wait for anything (it returns
// Blocked instead), and again off the loop with mayBlock true for a
// request it returned Blocked for, where it must not return Blocked. It
// must not keep req, or anything from it, after returning.
type Handler func(req *Request, a *Answer, mayBlock bool) Result

// Verifier proves, at the moment the loop is about to send them, that
// the bytes of an answer's body that lie in a file (SendFile, or a Body
// with BodyInFile) are still those the Handler verified.
type Verifier interface {
	// StillVerified reports whether they are. It is called on the loop
	// and must not wait (no disk read, no lock held for long).
	StillVerified() bool
}

// Answer is a Handler's answer: a status, header fields, and a body
// that is either bytes or a range of a file sent with sendfile(2). The
// loop writes the status line, the Date field (unless the Handler set
// one) and the Connection field; the Handler writes every other field,
// Content-Length included.
type Answer struct {
	// Status is the answer's status code.
	Status int
	// Body is written after the header; the Handler leaves it empty for a
	// HEAD. It must stay valid until Done is closed.
	Body []byte
	// BodyInFile says that Body lies in a mapping of a file: writing it
	// may fault its pages in from the disk, so the loop writes it, in a
	// loop turn later than the one in which the Handler answered on the
	// loop, with a system call the scheduler knows may wait, unless
	// Verified vouches for its pages then (see raw_linux.go).
	BodyInFile bool
	// Done, when set, is closed exactly once, when the answer's bytes are
	// all written, the answer is dropped (its connection cut short, see
	// Verified), or the connection is gone, whichever comes first.
	Done io.Closer
	// Verified, when set on an answer whose body lies in a file
	// (SendFile, or Body with BodyInFile), is asked on the loop before
	// each send of those bytes in a loop turn other than the one in which
	// the Handler, called on the loop, answered: a send resumed after a
	// full socket, the send of an answer queued behind the connection's
	// earlier answers, and the first send of an answer made off the loop
	// (mayBlock true) or by a ReadDone. An answer sent whole in the turn
	// in which the Handler answered on the loop is never asked. It is
	// asked at most once a turn: when it reports true, the bytes are sent
	// as in the Handler's turn (without the scheduler, see raw_linux.go).
	// When it reports false, none of the bytes not sent yet is sent, nor
	// any of the answers after it: once the answers before it are written
	// the connection ends (as after a last answer: its sending stopped,
	// what the client sends drained for a while), so that the client sees
	// the answer cut short of its Content-Length (or none of it, if its
	// header had not left), Done is closed, and Server.Unverified counts
	// the answer (unless the connection ends otherwise first: the client
	// gone, or WriteTimeout). Without it, such
	// a later send is made through the scheduler, as one that may wait for
	// the disk. It must stay usable until Done is closed. The proof
	// precedes the send it vouches for, as the Handler's own check
	// precedes a send in its turn: a page that leaves the page cache and
	// is read again from the disk between the two (at most the rest of
	// the loop's turn: a system call, or the other connections' work in
	// the same turn) is neither caught nor waited for through the
	// scheduler.
	Verified Verifier

	hdr        []byte
	file       bool
	fd         int
	off, n     int64
	sendfileOK bool
	noDate     bool
	closeConn  bool
	loopRead   loopRead // the loop's, for Read (read.go)
}

// Header adds the header field name: value.
func (a *Answer) Header(name string, value []byte) {
	a.hdr = append(a.hdr, name...)
	a.hdr = append(a.hdr, ':', ' ')
	a.hdr = append(a.hdr, value...)
	a.hdr = append(a.hdr, '\r', '\n')
}

// HeaderInt adds the header field name: v, in decimal.
func (a *Answer) HeaderInt(name string, v int64) {
	a.hdr = append(a.hdr, name...)
	a.hdr = append(a.hdr, ':', ' ')
	a.hdr = strconv.AppendInt(a.hdr, v, 10)
	a.hdr = append(a.hdr, '\r', '\n')
}

// CanSendFile reports whether the connection has nothing queued before
// this answer, when a body is best sent with SendFile.
func (a *Answer) CanSendFile() bool { return a.sendfileOK }

// SendFile makes the body the n bytes of the file fd from offset off,
// sent with sendfile(2) without moving the file's own offset (so fd may
// be shared). fd must stay open until Done is closed.
func (a *Answer) SendFile(fd int, off, n int64) {
	a.file, a.fd, a.off, a.n = true, fd, off, n
	a.Body = nil
}

// release closes Done, if set, once.
func (a *Answer) release() {
	if a.Done != nil {
		a.Done.Close()
		a.Done = nil
	}
}

// reset empties a for the next answer, keeping its header buffer.
func (a *Answer) reset() {
	*a = Answer{hdr: a.hdr[:0]}
}

// errorAnswer fills a with a JSON error answer that ends the connection,
// as the store's other error answers are written.
func errorAnswer(a *Answer, code int, msg string) {
	a.reset()
	a.Status = code
	body := `{"error":"` + msg + `"}` + "\n"
	a.Header("Content-Type", []byte("application/json"))
	a.Header("X-Content-Type-Options", []byte("nosniff"))
	a.HeaderInt("Content-Length", int64(len(body)))
	a.Body = []byte(body)
	a.closeConn = true
}

// serveFallback answers req with h, as net/http would: the handler's
// answer is buffered whole, then written with a Content-Length.
func serveFallback(ctx context.Context, h http.Handler, req *Request, remote string, a *Answer) {
	hr, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(req.raw)))
	if err != nil {
		errorAnswer(a, http.StatusBadRequest, "malformed request")
		return
	}
	hr.RemoteAddr = remote
	hr = hr.WithContext(ctx)
	w := &bufferedWriter{h: make(http.Header)}
	h.ServeHTTP(w, hr)
	w.answer(a, req.IsHead())
}

// bufferedWriter is the http.ResponseWriter of a fallback request: it
// keeps the answer until the handler returns. As under net/http, the
// header is the one the handler had when it wrote the status (by
// WriteHeader or its first Write): changes made to the map after that
// are not sent.
type bufferedWriter struct {
	h           http.Header
	sent        http.Header // h as it was at WriteHeader; nil: h
	code        int
	body        []byte
	wroteHeader bool
	calledHdr   bool // Header was called, so the handler may hold h
}

func (w *bufferedWriter) Header() http.Header {
	if w.wroteHeader && w.sent == nil {
		// The first look at h after the status: keep the header as it
		// was then, whatever the handler does with h now.
		w.sent = w.h.Clone()
	}
	w.calledHdr = true
	return w.h
}

func (w *bufferedWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		// As net/http does: a handler's bug, which ends the connection
		// without an answer rather than send a malformed status line.
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if w.wroteHeader || code < 200 {
		return // informational answers are not sent
	}
	w.code, w.wroteHeader = code, true
	if w.calledHdr {
		// The handler holds h and may change it after this call.
		w.sent = w.h.Clone()
	}
}

func (w *bufferedWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if bodyAllowed(w.code) {
		w.body = append(w.body, b...)
	}
	return len(b), nil
}

// bodyAllowed reports whether an answer of code may have a body.
func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

// answer writes w's answer into a, adding what net/http adds: a sniffed
// Content-Type and the Content-Length (always a length: the body is
// whole).
func (w *bufferedWriter) answer(a *Answer, head bool) {
	a.reset()
	if !w.wroteHeader {
		w.code = http.StatusOK
	}
	a.Status = w.code
	h := w.h
	if w.sent != nil {
		h = w.sent
	}
	if _, ok := h["Date"]; ok {
		a.noDate = true
	}
	if bodyAllowed(w.code) {
		if cl := h.Get("Content-Length"); cl != "" {
			// The length the handler set is the one the client reads by:
			// as net/http, send no byte past it, and end the connection
			// after a body short of it, lest the client read the next
			// answer as the rest of this one.
			n, err := strconv.ParseInt(cl, 10, 64)
			switch {
			case err != nil || n < 0:
				h.Del("Content-Length") // as net/http drops it; set below
			default:
				// One field, were there more, in digits alone.
				h.Set("Content-Length", strconv.FormatInt(n, 10))
				if head {
					break
				}
				if int64(len(w.body)) > n {
					w.body = w.body[:n]
				} else if int64(len(w.body)) < n {
					a.closeConn = true
				}
			}
		}
		if _, ok := h["Content-Type"]; !ok && len(w.body) > 0 && h.Get("Content-Encoding") == "" {
			h.Set("Content-Type", http.DetectContentType(w.body))
		}
		if h.Get("Content-Length") == "" && (!head || len(w.body) > 0) {
			h.Set("Content-Length", strconv.Itoa(len(w.body)))
		}
		if !head {
			a.Body = w.body
		}
	}
	h.Del("Transfer-Encoding")
	for _, v := range h["Connection"] {
		forEachToken([]byte(v), func(tok []byte) {
			if equalFold(tok, "close") {
				a.closeConn = true
			}
		})
	}
	h.Del("Connection")
	buf := bytes.NewBuffer(a.hdr)
	h.Write(buf) // sorted by name, values cleaned of line breaks
	a.hdr = buf.Bytes()
}
