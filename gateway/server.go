package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
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
	// 2 min (32 MiB at about 2 Mbit/s).
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
var ErrServerClosed = errors.New("gateway: server closed")

// Server serves a Gateway's handler over HTTP. It is safe for concurrent
// use; Serve is called once.
type Server struct {
	opts    ServerOptions
	gw      *Gateway
	ln      net.Listener
	httpSrv *http.Server

	serving      atomic.Bool
	shutdownOnce sync.Once
	stopping     chan struct{} // closed when Shutdown starts
	shutdownDone chan struct{} // closed when Shutdown has finished
	shutdownErr  error         // written before shutdownDone is closed
}

// NewServer binds the listener for g; nothing is served until Serve. The
// bound address is available at once (see Addr).
func NewServer(g *Gateway, opts ServerOptions) (*Server, error) {
	if g == nil {
		return nil, errors.New("gateway: NewServer: nil Gateway")
	}
	if opts.HTTPAddr == "" {
		return nil, errors.New("gateway: NewServer: an HTTP address is required")
	}
	opts = opts.withDefaults()
	ln, err := net.Listen("tcp", opts.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("gateway: listen: %w", err)
	}
	return &Server{
		opts: opts,
		gw:   g,
		ln:   ln,
		httpSrv: &http.Server{
			Handler:           g.Handler(),
			ReadHeaderTimeout: opts.ReadHeaderTimeout,
			ReadTimeout:       opts.ReadTimeout,
			WriteTimeout:      opts.WriteTimeout,
			IdleTimeout:       opts.IdleTimeout,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
		},
		stopping:     make(chan struct{}),
		shutdownDone: make(chan struct{}),
	}, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until ctx is cancelled, Shutdown is called or the listener
// fails. On cancellation it shuts down as Shutdown does, waiting at most
// ServerOptions.ShutdownTimeout for requests in flight. It returns nil
// after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("gateway: Serve called twice")
	}
	select {
	case <-s.stopping:
		return ErrServerClosed
	default:
	}
	s.opts.Logger.Info("gateway serving", "http", s.Addr().String())
	errc := make(chan error, 1)
	go func() {
		err := s.httpSrv.Serve(s.ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	var serveErr error
	select {
	case <-ctx.Done():
		s.opts.Logger.Info("gateway shutting down: draining requests in flight", "timeout", s.opts.ShutdownTimeout)
	case <-s.stopping:
	case serveErr = <-errc:
		if serveErr != nil {
			serveErr = fmt.Errorf("gateway: serve: %w", serveErr)
			s.opts.Logger.Error("gateway listener failed; shutting down", "err", serveErr)
		}
		errc <- nil // for the receive below
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ShutdownTimeout)
	defer cancel()
	shutErr := s.Shutdown(sctx)
	<-errc
	return errors.Join(serveErr, shutErr)
}

// Shutdown stops accepting connections and waits for requests in flight
// until ctx ends, then closes the connections left. /readyz answers 503
// from its start. It is safe to call more than once and from several
// goroutines: later calls wait for the first (or their own ctx) and return
// its result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		s.gw.draining.Store(true)
		close(s.stopping)
		if err := s.httpSrv.Shutdown(ctx); err != nil {
			s.shutdownErr = fmt.Errorf("gateway: drain: %w", err)
			s.httpSrv.Close()
		}
		s.ln.Close() // when Serve never ran
		close(s.shutdownDone)
	})
	select {
	case <-s.shutdownDone:
		return s.shutdownErr
	case <-ctx.Done():
		return ctx.Err()
	}
}
