package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/needle"
)

// ServerOptions configure a Server. Zero values take the documented
// defaults.
type ServerOptions struct {
	// Addr is the address to listen on ("host:port"; "127.0.0.1:0" picks
	// a free port, see Server.Addr). Required unless Listener is set.
	Addr string
	// Listener, when set, is served instead of listening on Addr; the
	// Server closes it. Useful when a node must know its own URL (for
	// Options.Self) before the Cache is built.
	Listener net.Listener
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
	// ShutdownTimeout bounds how long Serve drains requests in flight once
	// its context is cancelled; default 30 s.
	ShutdownTimeout time.Duration
	// ReadHeaderTimeout bounds reading a request's headers; default 10 s.
	ReadHeaderTimeout time.Duration
	// WriteTimeout bounds writing a response, a miss's fetch included;
	// default 60 s.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long; default
	// 120 s.
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
var ErrServerClosed = errors.New("cache: server closed")

// Server serves a Cache over HTTP: the image path, /healthz, /readyz and
// /metrics. It takes ownership of the Cache and closes it on shutdown. A
// Server is safe for concurrent use; Serve is called once.
type Server struct {
	opts    ServerOptions
	cache   *Cache
	ln      net.Listener
	httpSrv *http.Server

	draining atomic.Bool // set when shutdown starts; /readyz answers 503
	serving  atomic.Bool // Serve has been called

	shutdownOnce sync.Once
	shutdownDone chan struct{} // closed when Shutdown has finished
	shutdownErr  error         // written before shutdownDone is closed
	stopping     chan struct{} // closed when Shutdown starts
}

// NewServer binds the listener for c; nothing is served until Serve. The
// bound address is available at once.
func NewServer(c *Cache, opts ServerOptions) (*Server, error) {
	if c == nil {
		return nil, errors.New("cache: NewServer: nil Cache")
	}
	opts = opts.withDefaults()
	s := &Server{opts: opts, cache: c, ln: opts.Listener, shutdownDone: make(chan struct{}), stopping: make(chan struct{})}
	if s.ln == nil {
		if opts.Addr == "" {
			return nil, errors.New("cache: NewServer: an address is required")
		}
		var err error
		if s.ln, err = net.Listen("tcp", opts.Addr); err != nil {
			return nil, fmt.Errorf("cache: listener: %w", err)
		}
	}
	images := c.Handler()
	reg := c.Registry()
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, needle.ImagePathPrefix) {
			images.ServeHTTP(w, r)
			return
		}
		switch r.URL.Path {
		case "/healthz":
			imagehttp.WriteJSON(w, http.StatusOK, map[string]any{"status": "ok"})
		case "/readyz":
			if s.draining.Load() {
				imagehttp.WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "shutting down"})
				return
			}
			imagehttp.WriteJSON(w, http.StatusOK, map[string]any{"status": "ready"})
		case "/metrics":
			metrics.ServeHTTP(w, r)
		default:
			imagehttp.NoRoute(w)
		}
	})
	s.httpSrv = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		WriteTimeout:      opts.WriteTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Cache returns the served Cache.
func (s *Server) Cache() *Cache { return s.cache }

// Serve serves HTTP until ctx is cancelled, Shutdown is called, or the
// listener fails. On cancellation it shuts down as Shutdown does, waiting
// at most ServerOptions.ShutdownTimeout for requests in flight. It returns
// nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("cache: Serve called twice")
	}
	select {
	case <-s.stopping:
		return ErrServerClosed
	default:
	}
	s.opts.Logger.Info("cache serving", "http", s.Addr().String(), "capacity", s.cache.opts.Capacity,
		"nodes", len(s.cache.opts.Nodes), "self", s.cache.opts.Self)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		err := s.httpSrv.Serve(s.ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	})
	var serveErr error
	select {
	case <-ctx.Done():
		s.opts.Logger.Info("cache shutting down: draining requests in flight", "timeout", s.opts.ShutdownTimeout)
	case <-s.stopping:
	case serveErr = <-errc:
		if serveErr != nil {
			serveErr = fmt.Errorf("cache: serve: %w", serveErr)
			s.opts.Logger.Error("cache listener failed; shutting down", "err", serveErr)
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ShutdownTimeout)
	defer cancel()
	shutErr := s.Shutdown(sctx)
	wg.Wait()
	return errors.Join(serveErr, shutErr)
}

// Shutdown stops accepting connections, waits for requests in flight
// (misses wait for their fetch) until ctx ends, then closes what is left
// and closes the Cache. It is safe to call more than once and from
// several goroutines: later calls wait for the first to finish (or for
// their own ctx) and return its result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		s.draining.Store(true)
		close(s.stopping)
		var err error
		if err = s.httpSrv.Shutdown(ctx); err != nil {
			// Out of time: cut the connections still busy.
			err = fmt.Errorf("cache: HTTP drain: %w", err)
			s.httpSrv.Close()
		}
		// Closed by the HTTP server when Serve ran; not otherwise.
		_ = s.ln.Close()
		s.shutdownErr = errors.Join(err, s.cache.Close())
		close(s.shutdownDone)
	})
	select {
	case <-s.shutdownDone:
		return s.shutdownErr
	case <-ctx.Done():
		return ctx.Err()
	}
}
