package cache

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/internal/serve"
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

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = serve.ErrClosed

// Server serves a Cache over HTTP: the image path, /healthz, /readyz and
// /metrics. It takes ownership of the Cache and closes it on shutdown. A
// Server is safe for concurrent use; Serve is called once.
type Server struct {
	opts  ServerOptions
	cache *Cache
	http  *serve.HTTP
}

// NewServer binds the listener for c; nothing is served until Serve. The
// bound address is available at once.
func NewServer(c *Cache, opts ServerOptions) (*Server, error) {
	if c == nil {
		return nil, errors.New("cache: NewServer: nil Cache")
	}
	opts = opts.withDefaults()
	ln := opts.Listener
	if ln == nil {
		var err error
		if ln, err = serve.Listen("cache", opts.Addr); err != nil {
			return nil, err
		}
	}
	s := &Server{opts: opts, cache: c}
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
			if s.http.Draining() {
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
	s.http = serve.New(ln, handler, serve.Options{
		Name: "cache", Logger: opts.Logger, ShutdownTimeout: opts.ShutdownTimeout,
		ReadHeaderTimeout: opts.ReadHeaderTimeout, WriteTimeout: opts.WriteTimeout, IdleTimeout: opts.IdleTimeout,
		AfterDrain: c.Close,
	})
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.http.Addr() }

// Cache returns the served Cache.
func (s *Server) Cache() *Cache { return s.cache }

// Serve serves HTTP until ctx is cancelled, Shutdown is called, or the
// listener fails. On cancellation it shuts down as Shutdown does, waiting
// at most ServerOptions.ShutdownTimeout for requests in flight. It returns
// nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	s.opts.Logger.Info("cache serving", "http", s.Addr().String(), "capacity", s.cache.opts.Capacity,
		"nodes", len(s.cache.opts.Nodes), "self", s.cache.opts.Self)
	return s.http.Serve(ctx)
}

// Shutdown stops accepting connections, waits for requests in flight
// (misses wait for their fetch) until ctx ends, then closes what is left
// and closes the Cache. It is safe to call more than once and from
// several goroutines: later calls wait for the first to finish (or for
// their own ctx) and return its result.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }
