package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// fastWriteBuffer is the per-connection write buffer of the fasthttp
// server. A response that fits (headers and a thumbnail) leaves in one
// write; a larger one is sent with one writev of headers and body, without
// a copy into the buffer.
const fastWriteBuffer = 16 << 10

// maxFastReadBuffer bounds the per-connection read buffer, which a
// request's line and headers must fit in: fasthttp keeps it for the life
// of a kept-alive connection, where net/http keeps 4 KiB and lets headers
// grow to MaxHeaderBytes.
const maxFastReadBuffer = 16 << 10

// newFast returns the fasthttp server of opts.Fast, with h answering what
// Fast declines. The options map onto fasthttp's as closely as they can:
// ReadHeaderTimeout (or ReadTimeout, when longer) bounds reading a
// request, IdleTimeout the wait for the next one on a kept-alive
// connection, WriteTimeout writing the answer, and the read buffer a
// request's line and headers must fit in (431 otherwise) is MaxHeaderBytes
// up to 16 KiB.
func newFast(h http.Handler, opts Options) *fasthttp.Server {
	slow := fasthttpadaptor.NewFastHTTPHandler(h)
	fast := opts.Fast
	readTimeout := max(opts.ReadHeaderTimeout, opts.ReadTimeout)
	return &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			if !fast(ctx) {
				slow(ctx)
			}
		},
		ReadTimeout:     readTimeout,
		WriteTimeout:    opts.WriteTimeout,
		IdleTimeout:     opts.IdleTimeout,
		ReadBufferSize:  min(opts.MaxHeaderBytes, maxFastReadBuffer),
		WriteBufferSize: fastWriteBuffer,
		// The roles' answers carry the same headers as under net/http:
		// no Server header, and a Content-Type only where the handler
		// sets one.
		NoDefaultServerHeader: true,
		NoDefaultContentType:  true,
		// While draining, answers say "Connection: close", as net/http's
		// do after Shutdown.
		CloseOnShutdown: true,
		Logger:          fastLogger{opts.Logger},
		ErrorHandler:    fastError,
	}
}

// fastError answers a request fasthttp could not read as every other error
// is answered, with a JSON body: 431 for a request line and headers over
// the read buffer, 408 for a client too slow to send them, 400 for
// anything unparsable.
func fastError(ctx *fasthttp.RequestCtx, err error) {
	code, msg := http.StatusBadRequest, "malformed request"
	var small *fasthttp.ErrSmallBuffer
	var netErr *net.OpError
	switch {
	case errors.As(err, &small):
		code, msg = http.StatusRequestHeaderFieldsTooLarge, "request line and headers too large"
	case errors.As(err, &netErr) && netErr.Timeout():
		code, msg = http.StatusRequestTimeout, "request not received in time"
	}
	ctx.Response.Reset()
	ctx.SetStatusCode(code)
	ctx.SetContentType("application/json")
	ctx.Response.Header.Set("X-Content-Type-Options", "nosniff")
	ctx.SetBodyString(`{"error":"` + msg + `"}` + "\n")
}

// serveFast runs the fasthttp server until Shutdown.
func (s *HTTP) serveFast() error {
	err := s.fastSrv.Serve(s.ln)
	select {
	case <-s.stopping:
		// Shutdown closed the listener; fasthttp reports that as an error.
		return nil
	default:
		return err
	}
}

// shutdownFast stops the fasthttp server: it closes the listener and the
// idle connections, and waits for the requests in flight until ctx ends.
// Connections still busy then are told to close after their answer.
func (s *HTTP) shutdownFast(ctx context.Context) error {
	if err := s.fastSrv.ShutdownWithContext(ctx); err != nil && ctx.Err() != nil {
		return fmt.Errorf("%s: drain: %w", s.opts.Name, err)
	}
	return nil
}

// fastLogger sends fasthttp's log lines (connection and parse errors) to
// the role's logger at warning level, as net/http's ErrorLog does.
type fastLogger struct{ l *slog.Logger }

func (f fastLogger) Printf(format string, args ...any) {
	f.l.Warn(fmt.Sprintf(format, args...))
}
