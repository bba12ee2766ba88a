package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/haybale/haybale/internal/evloop"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/serve"
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
	// EventLoop serves the HTTP connections on event loops, one per core,
	// which answer plain image GETs and HEADs without a goroutine per
	// connection (see loop.go), instead of with fasthttp. Where event
	// loops cannot run (not Linux) fasthttp serves.
	EventLoop bool
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
	// Authorizer checks the write token of every Write and the delete
	// token of every Delete. nil refuses every Write and Delete: a store
	// without the cluster secret never takes unauthenticated writes.
	Authorizer WriteAuthorizer
	// Credentials secure the gRPC server (mutual TLS from the cluster CA,
	// each method allowed to the roles of Policy) and the connections it
	// opens to replication sources. nil means rpc.Insecure(): no TLS and
	// no role checks, for tests; cmd/haybale always sets it.
	Credentials *rpc.Credentials
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

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = serve.ErrClosed

// Server serves a Store: images over HTTP (the CDN-origin surface) and
// writes and administration over gRPC. It takes ownership of the Store and
// closes it on shutdown. A Server is safe for concurrent use; Serve is
// called once.
type Server struct {
	opts    ServerOptions
	store   *Store
	metrics *metrics
	handler http.Handler
	grpcLn  net.Listener
	srv     *serve.HTTP // both servers and their drained shutdown
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
	opts.Credentials = rpc.OrInsecure(opts.Credentials)
	m, err := newMetrics(st)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, store: st, metrics: m}
	httpLn, err := net.Listen("tcp", opts.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("store: HTTP listener: %w", err)
	}
	if s.grpcLn, err = net.Listen("tcp", opts.GRPCAddr); err != nil {
		httpLn.Close()
		return nil, fmt.Errorf("store: gRPC listener: %w", err)
	}
	h := newHTTPHandler(s)
	s.handler = h
	g, err := newGRPCServer(s)
	if err != nil {
		httpLn.Close()
		s.grpcLn.Close()
		return nil, err
	}
	var loop evloop.Handler
	if opts.EventLoop {
		loop = h.serveLoop
	}
	s.srv = serve.New(httpLn, s.handler, serve.Options{
		Name: "store", Logger: opts.Logger, ShutdownTimeout: opts.ShutdownTimeout,
		ReadHeaderTimeout: opts.ReadHeaderTimeout, WriteTimeout: opts.WriteTimeout, IdleTimeout: opts.IdleTimeout,
		Fast: h.serveFast,
		Loop: loop,
		GRPC: g, GRPCListener: s.grpcLn,
		AfterDrain: s.closeStore,
		MaxConns:   opts.MaxConns,
	})
	s.metrics.loopUnverified = s.srv.Unverified
	return s, nil
}

// HTTPAddr returns the address the HTTP server listens on.
func (s *Server) HTTPAddr() net.Addr { return s.srv.Addr() }

// GRPCAddr returns the address the gRPC server listens on.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLn.Addr() }

// Store returns the served Store.
func (s *Server) Store() *Store { return s.store }

// draining reports whether shutdown has started; /readyz answers 503.
func (s *Server) draining() bool { return s.srv.Draining() }

// Serve serves HTTP and gRPC until ctx is cancelled, Shutdown is called,
// or a listener fails. On cancellation it shuts down as Shutdown does,
// waiting at most ServerOptions.ShutdownTimeout for requests in flight.
// It returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	s.opts.Logger.Info("store serving", "http", s.HTTPAddr().String(), "grpc", s.GRPCAddr().String(),
		"volumes", len(s.store.Volumes()), "failed_volumes", len(s.store.Failed()))
	// EC volumes sync their indexes and journals with the other holders
	// while the store serves (see ec_sync.go).
	syncCtx, stopSync := context.WithCancel(ctx)
	syncDone := make(chan struct{})
	go func() {
		defer close(syncDone)
		s.store.runECSync(syncCtx)
	}()
	err := s.srv.Serve(ctx)
	stopSync()
	<-syncDone
	return err
}

// Shutdown stops accepting connections, waits for requests in flight
// (HTTP responses and gRPC calls, including writes waiting for their
// sync) until ctx ends, then closes what is left and closes the Store,
// which syncs and closes every volume. It is safe to call more than once
// and from several goroutines: later calls wait for the first to finish
// (or for their own ctx) and return its result.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// closeStore runs once the requests have drained.
func (s *Server) closeStore() error {
	if err := s.store.Close(); err != nil {
		err = fmt.Errorf("store: closing volumes: %w", err)
		s.opts.Logger.Error("store shut down with errors", "err", err)
		return err
	}
	s.opts.Logger.Info("store shut down")
	return nil
}

// reportCorrupt logs, counts and reports a read that failed verification.
func (s *Server) reportCorrupt(vid uint32, key uint64, size needle.SizeCode, err error) {
	s.metrics.corruptReads.Inc()
	s.opts.Logger.Error("corrupt image read", "vid", vid, "key", key, "size", size.String(), "err", err)
	if s.opts.OnCorrupt != nil {
		s.opts.OnCorrupt(vid, key, size, err)
	}
}
