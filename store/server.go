package store

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

	"golang.org/x/net/netutil"
	"google.golang.org/grpc"

	"github.com/haybale/haybale/needle"
)

// ServerOptions configure a Server. Zero values take the documented
// defaults.
type ServerOptions struct {
	// HTTPAddr is the address of the HTTP read server ("host:port";
	// "127.0.0.1:0" picks a free port, see Server.HTTPAddr). Required.
	HTTPAddr string
	// GRPCAddr is the address of the gRPC write and admin server.
	// Required.
	GRPCAddr string
	// MaxConns bounds the HTTP connections served at once; further ones
	// wait in the kernel's accept queue. 0 means no bound.
	MaxConns int
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
	// Authorizer checks the write token of every Write and Delete; nil
	// leaves writes open (a cluster without a secret).
	Authorizer WriteAuthorizer
	// OnCorrupt is called, from the goroutine serving the read, for every
	// read whose stored bytes failed verification; it must not block. The
	// store has already logged and counted the read, and answered it with
	// an error. nil means no call.
	OnCorrupt func(vid uint32, key uint64, size needle.SizeCode, err error)
	// ShutdownTimeout bounds how long Serve drains in-flight requests once
	// its context is cancelled; default 30s. After it, connections are
	// closed.
	ShutdownTimeout time.Duration
	// ReadHeaderTimeout bounds reading an HTTP request's headers and a gRPC
	// connection's handshake; default 10s.
	ReadHeaderTimeout time.Duration
	// WriteTimeout bounds writing a response; default 60s.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long; default
	// 120s.
	IdleTimeout time.Duration
}

func (o ServerOptions) withDefaults() ServerOptions {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 30 * time.Second
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 60 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 120 * time.Second
	}
	return o
}

// maxHeaderBytes bounds a request's headers; image requests need little.
const maxHeaderBytes = 64 << 10

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("store: server closed")

// Server serves a Store: images over HTTP (the CDN-origin surface) and
// writes and administration over gRPC. It takes ownership of the Store and
// closes it on shutdown. A Server is safe for concurrent use; Serve is
// called once.
type Server struct {
	opts    ServerOptions
	store   *Store
	metrics *metrics

	httpLn  net.Listener
	grpcLn  net.Listener
	httpSrv *http.Server
	grpcSrv *grpc.Server

	draining atomic.Bool // set when shutdown starts; /readyz answers 503
	serving  atomic.Bool // Serve has been called

	shutdownOnce sync.Once
	shutdownDone chan struct{} // closed when Shutdown has finished
	shutdownErr  error         // written before shutdownDone is closed
	stopping     chan struct{} // closed when Shutdown starts
}

// NewServer binds the HTTP and gRPC listeners for st; nothing is served
// until Serve. The bound addresses are available at once, so a caller can
// listen on port 0 and learn the port.
func NewServer(st *Store, opts ServerOptions) (*Server, error) {
	if st == nil {
		return nil, errors.New("store: NewServer: nil Store")
	}
	if opts.HTTPAddr == "" || opts.GRPCAddr == "" {
		return nil, errors.New("store: NewServer: both an HTTP and a gRPC address are required")
	}
	if opts.MaxConns < 0 {
		return nil, fmt.Errorf("store: NewServer: negative MaxConns %d", opts.MaxConns)
	}
	opts = opts.withDefaults()
	m, err := newMetrics(st)
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:         opts,
		store:        st,
		metrics:      m,
		shutdownDone: make(chan struct{}),
		stopping:     make(chan struct{}),
	}
	if s.httpLn, err = net.Listen("tcp", opts.HTTPAddr); err != nil {
		return nil, fmt.Errorf("store: HTTP listener: %w", err)
	}
	if s.grpcLn, err = net.Listen("tcp", opts.GRPCAddr); err != nil {
		s.httpLn.Close()
		return nil, fmt.Errorf("store: gRPC listener: %w", err)
	}
	if opts.MaxConns > 0 {
		s.httpLn = netutil.LimitListener(s.httpLn, opts.MaxConns)
	}
	s.httpSrv = &http.Server{
		Handler:           newHTTPHandler(s),
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		WriteTimeout:      opts.WriteTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	s.grpcSrv = newGRPCServer(s)
	return s, nil
}

// HTTPAddr returns the address the HTTP server listens on.
func (s *Server) HTTPAddr() net.Addr { return s.httpLn.Addr() }

// GRPCAddr returns the address the gRPC server listens on.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLn.Addr() }

// Store returns the served Store.
func (s *Server) Store() *Store { return s.store }

// Serve serves HTTP and gRPC until ctx is cancelled, Shutdown is called,
// or a listener fails. On cancellation it shuts down as Shutdown does,
// waiting at most ServerOptions.ShutdownTimeout for requests in flight.
// It returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("store: Serve called twice")
	}
	select {
	case <-s.stopping:
		return ErrServerClosed
	default:
	}
	s.opts.Logger.Info("store serving", "http", s.HTTPAddr().String(), "grpc", s.GRPCAddr().String(),
		"volumes", len(s.store.Volumes()), "failed_volumes", len(s.store.Failed()))

	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() {
		err := s.httpSrv.Serve(s.httpLn)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	})
	wg.Go(func() {
		err := s.grpcSrv.Serve(s.grpcLn)
		if errors.Is(err, grpc.ErrServerStopped) {
			err = nil
		}
		errc <- err
	})

	var serveErr error
	select {
	case <-ctx.Done():
		s.opts.Logger.Info("store shutting down: draining requests in flight", "timeout", s.opts.ShutdownTimeout)
	case <-s.stopping:
	case serveErr = <-errc:
		if serveErr != nil {
			serveErr = fmt.Errorf("store: serve: %w", serveErr)
			s.opts.Logger.Error("store listener failed; shutting down", "err", serveErr)
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ShutdownTimeout)
	defer cancel()
	shutErr := s.Shutdown(sctx)
	wg.Wait()
	return errors.Join(serveErr, shutErr)
}

// Shutdown stops accepting connections, waits for requests in flight
// (HTTP responses and gRPC calls, including writes waiting for their
// sync) until ctx ends, then closes what is left and closes the Store,
// which syncs and closes every volume. It is safe to call more than once
// and from several goroutines: later calls wait for the first to finish
// (or for their own ctx) and return its result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		s.draining.Store(true)
		close(s.stopping)
		s.shutdownErr = s.shutdown(ctx)
		close(s.shutdownDone)
	})
	select {
	case <-s.shutdownDone:
		return s.shutdownErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) shutdown(ctx context.Context) error {
	var wg sync.WaitGroup
	var httpErr error
	wg.Go(func() {
		if err := s.httpSrv.Shutdown(ctx); err != nil {
			// Out of time: cut the connections still busy.
			httpErr = fmt.Errorf("store: HTTP drain: %w", err)
			s.httpSrv.Close()
		}
	})
	wg.Go(func() {
		done := make(chan struct{})
		go func() {
			s.grpcSrv.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			s.grpcSrv.Stop()
			<-done
		}
	})
	wg.Wait()
	// Serve may never have run; the listeners are closed either way.
	s.httpLn.Close()
	s.grpcLn.Close()
	var closeErr error
	if err := s.store.Close(); err != nil {
		closeErr = fmt.Errorf("store: closing volumes: %w", err)
	}
	err := errors.Join(httpErr, closeErr)
	if err != nil {
		s.opts.Logger.Error("store shut down with errors", "err", err)
	} else {
		s.opts.Logger.Info("store shut down")
	}
	return err
}

// reportCorrupt logs, counts and reports a read that failed verification.
func (s *Server) reportCorrupt(vid uint32, key uint64, size needle.SizeCode, err error) {
	s.metrics.corruptReads.Inc()
	s.opts.Logger.Error("corrupt image read", "vid", vid, "key", key, "size", size.String(), "err", err)
	if s.opts.OnCorrupt != nil {
		s.opts.OnCorrupt(vid, key, size, err)
	}
}
