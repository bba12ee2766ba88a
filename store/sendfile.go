package store

import (
	"io"
	"syscall"

	"github.com/haybale/haybale/internal/serve"
)

// sendBody is the body of a large image answer on the fast path: the
// verified needle's bytes, sent from the volume file to the socket with
// sendfile(2) (serve.SendFile), so that they are never copied into the
// process. It is only built for a plain TCP connection (serve.RawTCP is
// nil for any other, and everywhere but on Linux). fasthttp
// flushes the headers (Response.ImmediateHeaderFlush) before it calls
// WriteTo, which then writes to the connection's descriptor directly,
// under the connection's write deadline.
type sendBody struct {
	conn syscall.RawConn
	fd   int   // the volume file, held open by the request's volume.Ref
	off  int64 // where the needle's data starts in it
	n    int64 // and its length
}

// Read is never called: fasthttp uses WriteTo (SupportsBodyWriteTo).
func (s *sendBody) Read([]byte) (int, error) { return 0, io.ErrNoProgress }

// SupportsBodyWriteTo tells fasthttp to send the body with WriteTo.
func (s *sendBody) SupportsBodyWriteTo() bool { return true }

// WriteTo sends the body with sendfile, from its offset; w, fasthttp's
// buffered writer, was flushed before and is not used.
func (s *sendBody) WriteTo(io.Writer) (int64, error) {
	return serve.SendFile(s.conn, s.fd, s.off, s.n)
}
