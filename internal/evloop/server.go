// Package evloop serves HTTP/1.1 on event loops: one epoll loop per core
// reads, parses and answers the requests of the connections handed to
// it, with no goroutine per connection. It owns the loops, the HTTP/1.1
// framing (keep-alive, Connection: close, HTTP/1.0, HEAD, pipelining,
// 400 and 431 answers), the per-connection limits and timeouts, and the
// writing of answers (writev of queued answers, sendfile(2) of file
// bodies); what a request is answered with belongs to the Handler. A
// body that lies in a file (sendfile, or a file's mapping) and is sent in
// a later loop turn than the one its Handler answered in is first vouched
// for by the answer's Verifier, when it has one, or the answer is cut
// short and its connection ended (Answer.Verified, raw_linux.go).
//
// A request the Handler answers at once is answered on the loop. One
// whose answer waits for a read from the disk has the loop make the read
// through an io_uring of its own (Answer.Read), its completion an event
// of the loop's epoll set, and is answered on the loop when it is done
// (read.go); where that cannot be, or for any other wait, it is answered
// by the Handler on a goroutine of a bounded pool, and one it declines by
// the fallback http.Handler there too. While a connection waits for such
// an answer the loop reads and parses nothing more of it, so answers
// leave in the order of the requests. The fallback's answer is buffered whole and sent with
// the headers net/http would add (Date, a sniffed Content-Type) and
// always a Content-Length (where net/http would send a long body of
// unknown length chunked); a length its handler set is kept to as
// net/http keeps to it (no byte past it, the connection ended after a
// body short of it). A request that announces a body is refused (413):
// the servers this package fronts take none on this listener. A Handler
// or fallback that panics ends its connection with no answer, on the
// loop as off it, as under net/http.
//
// The parser is strict where parsers are known to disagree, and answers
// none that net/http's server would call malformed: a request line, header
// fields and their end are read as RFC 9112 writes them (CRLF only; no
// bare CR or LF, NUL or other control byte, obsolete line folding, space
// before a field's colon, second Host, Host byte net/http refuses, target
// ReadRequest refuses, or version not of the form HTTP/<digit>.<digit>).
// Where one request ends and the next begins is therefore where net/http
// would find it too. Otherwise it answers as net/http's server does: a
// version 1.x above 1.1 is served as 1.1, another major is refused with
// 505; an Expect field other than 100-continue is refused with 417 (the
// Handler does not see the request); CR and LF bytes before a request are
// skipped only among the first four after a POST (the tolerance of RFC
// 9112, 2.2), and are malformed elsewhere. Error answers carry a JSON
// body and end the connection. A fallback handler's header changes made
// after it wrote the status are not sent, as under net/http.
//
// Limits against hostile clients: a request's line and headers must
// arrive within ReadHeaderTimeout and fit in MaxHeaderBytes (431
// otherwise); a kept-alive connection idle for IdleTimeout is closed; an
// answer not taken by the client within WriteTimeout closes the
// connection; and a connection with more than MaxQueued bytes of answers
// waiting is not read until they drain, so neither what a client sends
// nor what it refuses to read grows a buffer past a bound.
//
// The loops run on Linux (epoll); Supported is false elsewhere.
package evloop

import (
	"errors"
	"log/slog"
	"runtime"
	"time"
)

// Options configure a Server. Zero values take the documented defaults.
type Options struct {
	// Loops is the number of event loops; default GOMAXPROCS.
	Loops int
	// Workers bounds the goroutines that answer requests off the loops
	// (reads that may wait for the disk, and the fallback handler);
	// default 256.
	Workers int
	// ReadHeaderTimeout bounds the arrival of a request's line and
	// headers from their first byte, and the wait for the first request
	// of a new connection; default 10 s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a kept-alive connection idle this long; default
	// 120 s.
	IdleTimeout time.Duration
	// WriteTimeout bounds how long an answer at the head of a
	// connection's queue may take to be written; default none.
	WriteTimeout time.Duration
	// MaxHeaderBytes bounds a request's line and headers; default 16 KiB,
	// and no more than 64 KiB.
	MaxHeaderBytes int
	// MaxQueued is how many bytes of answers may wait on a connection
	// before the loop stops reading its requests; default 256 KiB.
	MaxQueued int
	// Logger receives the loops' warnings; default slog.Default().
	Logger *slog.Logger
	// OnClose, when set, is called once for each connection given to
	// Enroll when it ends (closed, or refused by Enroll).
	OnClose func()
}

func (o Options) withDefaults() Options {
	if o.Loops <= 0 {
		o.Loops = runtime.GOMAXPROCS(0)
	}
	if o.Workers <= 0 {
		o.Workers = 256
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 120 * time.Second
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 16 << 10
	}
	o.MaxHeaderBytes = min(o.MaxHeaderBytes, 64<<10)
	if o.MaxQueued <= 0 {
		o.MaxQueued = 256 << 10
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// ErrClosed is returned by Enroll once Shutdown has started.
var ErrClosed = errors.New("evloop: server shut down")
