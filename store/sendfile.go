package store

import (
	"errors"
	"io"
	"sync/atomic"
	"syscall"

	"github.com/haybale/haybale/internal/evloop"
	"github.com/haybale/haybale/internal/serve"
)

// sendBody is the body of a large image answer on the fast path: the
// verified needle's bytes, sent from the volume file to the socket with
// sendfile(2) (serve.SendFileVerified), so that they are never copied into
// the process. It is only built for a plain TCP connection (serve.RawTCP
// is nil for any other, and everywhere but on Linux). fasthttp
// flushes the headers (Response.ImmediateHeaderFlush) before it calls
// WriteTo, which then writes to the connection's descriptor directly,
// under the connection's write deadline.
//
// The kernel reads the file's pages again as it sends them, and WriteTo
// runs after the handler returns, behind the header flush (which may wait
// for the socket behind earlier answers of the connection), and waits for
// the socket between sendfile calls: ref (the request's volume.Ref, which
// holds the verified mapping of the needle) is asked before the first
// sendfile call and before the first after every wait. When the pages are
// no longer those verified, nothing more is sent and WriteTo fails, so
// fasthttp ends the connection: the client sees the answer short of its
// Content-Length, never unverified bytes.
type sendBody struct {
	conn syscall.RawConn
	fd   int             // the volume file, held open by the request's volume.Ref
	off  int64           // where the needle's data starts in it
	n    int64           // and its length
	ref  evloop.Verifier // the request's *volume.Ref
	cut  *atomic.Int64   // answers cut short: ref's proof failed
}

// Read is never called: fasthttp uses WriteTo (SupportsBodyWriteTo).
func (s *sendBody) Read([]byte) (int, error) { return 0, io.ErrNoProgress }

// SupportsBodyWriteTo tells fasthttp to send the body with WriteTo.
func (s *sendBody) SupportsBodyWriteTo() bool { return true }

// WriteTo sends the body with sendfile, from its offset, proving its
// bytes as it goes; w, fasthttp's buffered writer, was flushed before and
// is not used.
func (s *sendBody) WriteTo(io.Writer) (int64, error) {
	n, err := serve.SendFileVerified(s.conn, s.fd, s.off, s.n, s.ref)
	if errors.Is(err, serve.ErrUnverified) {
		s.cut.Add(1)
	}
	return n, err
}
