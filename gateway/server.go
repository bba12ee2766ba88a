package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/haybale/haybale/internal/serve"
)

// ServerOptions configure a Server. Zero values take the documented
// defaults.
type ServerOptions struct {
	// HTTPAddr is the listen address ("host:port"; "127.0.0.1:0" picks a
	// free port, see Server.Addr). Required.
	HTTPAddr string
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
	// ReadHeaderTimeout bounds reading a request's headers; default 10 s.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included; default
	// 2 min (32 MiB at about 2 Mbit/s). Upload bodies are paced by the
	// Gateway's own limits instead (Options.MinUploadRate and
	// UploadTimeout), which set the read deadline as they go.
	ReadTimeout time.Duration
	// WriteTimeout bounds a request from the end of its headers to the end
	// of its answer, resizing and storing included; default 3 min.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long; default
	// 120 s.
	IdleTimeout time.Duration
	// ShutdownTimeout bounds how long Serve drains requests in flight once
	// its context is cancelled; default 30 s.
	ShutdownTimeout time.Duration
}

func (o ServerOptions) withDefaults() ServerOptions {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 2 * time.Minute
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 3 * time.Minute
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 120 * time.Second
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 30 * time.Second
	}
	return o
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = serve.ErrClosed

// Server serves a Gateway's handler over HTTP. It is safe for concurrent
// use; Serve is called once.
type Server struct {
	gw   *Gateway
	opts ServerOptions
	http *serve.HTTP
}

// NewServer binds the listener for g; nothing is served until Serve. The
// bound address is available at once (see Addr).
func NewServer(g *Gateway, opts ServerOptions) (*Server, error) {
	if g == nil {
		return nil, errors.New("gateway: NewServer: nil Gateway")
	}
	opts = opts.withDefaults()
	ln, err := serve.Listen("gateway", opts.HTTPAddr)
	if err != nil {
		return nil, err
	}
	return &Server{gw: g, opts: opts, http: serve.New(ln, g.Handler(), serve.Options{
		Name: "gateway", Logger: opts.Logger, ShutdownTimeout: opts.ShutdownTimeout,
		ReadHeaderTimeout: opts.ReadHeaderTimeout, ReadTimeout: opts.ReadTimeout,
		WriteTimeout: opts.WriteTimeout, IdleTimeout: opts.IdleTimeout,
		OnDrain: func() { g.draining.Store(true) },
	})}, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.http.Addr() }

// Serve serves until ctx is cancelled, Shutdown is called or the listener
// fails. On cancellation it shuts down as Shutdown does, waiting at most
// ServerOptions.ShutdownTimeout for requests in flight. It returns nil
// after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	s.opts.Logger.Info("gateway serving", "http", s.Addr().String())
	return s.http.Serve(ctx)
}

// Shutdown stops accepting connections and waits for requests in flight
// until ctx ends, then closes the connections left. /readyz answers 503
// from its start. It is safe to call more than once and from several
// goroutines: later calls wait for the first (or their own ctx) and return
// its result.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }
