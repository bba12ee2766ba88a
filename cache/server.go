package cache

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/haybale/haybale/internal/evloop"
	"github.com/haybale/haybale/internal/imagehttp"
	"github.com/haybale/haybale/internal/pki"
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
	// InternalAddr is the address of the internal listener, which serves
	// eviction (DELETE /p/<photo ID>) and pushes (PUT /p/<photo
	// ID>/<size>), to gateways only, and /metrics (to operators only);
	// none is served on the public address. Empty
	// (and no InternalListener): no internal listener.
	InternalAddr string
	// InternalListener, when set, is served instead of listening on
	// InternalAddr; the Server closes it.
	InternalListener net.Listener
	// InternalTLS is the internal listener's TLS configuration; it must
	// require and verify client certificates from the cluster CA
	// (pki.Node.ServerTLS), and the caller's role is read from them. nil
	// serves plain HTTP with no role check: an --insecure cluster, or
	// tests.
	InternalTLS *tls.Config
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
	// EventLoop serves the public listener on event loops, one per core,
	// which answer plain hits without a goroutine per connection (see
	// loop.go), instead of with fasthttp. Where event loops cannot run
	// (not Linux) fasthttp serves.
	EventLoop bool
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

// Server serves a Cache over HTTP: on the public address the image path
// (GET, HEAD), /healthz and /readyz; on the internal address eviction and
// /metrics, to authenticated callers. It takes ownership of the Cache and
// closes it on shutdown. A Server is safe for concurrent use; Serve is
// called once.
type Server struct {
	opts     ServerOptions
	cache    *Cache
	http     *serve.HTTP
	internal *serve.HTTP // nil without an internal listener
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
		default:
			imagehttp.NoRoute(w)
		}
	})
	iln := opts.InternalListener
	if iln == nil && opts.InternalAddr != "" {
		var err error
		if iln, err = serve.Listen("cache internal", opts.InternalAddr); err != nil {
			ln.Close()
			return nil, err
		}
	}
	if iln != nil {
		if opts.InternalTLS != nil {
			iln = tls.NewListener(iln, opts.InternalTLS)
		}
		s.internal = serve.New(iln, c.InternalHandler(opts.InternalTLS != nil), serve.Options{
			Name: "cache internal", Logger: opts.Logger, ShutdownTimeout: opts.ShutdownTimeout,
			ReadHeaderTimeout: opts.ReadHeaderTimeout, WriteTimeout: opts.WriteTimeout, IdleTimeout: opts.IdleTimeout,
		})
	}
	var loop evloop.Handler
	if opts.EventLoop {
		loop = c.serveLoop
	}
	s.http = serve.New(ln, handler, serve.Options{
		Name: "cache", Logger: opts.Logger, ShutdownTimeout: opts.ShutdownTimeout,
		Fast:              c.serveFast,
		Loop:              loop,
		ReadHeaderTimeout: opts.ReadHeaderTimeout, WriteTimeout: opts.WriteTimeout, IdleTimeout: opts.IdleTimeout,
		AfterDrain: func() error {
			var err error
			if s.internal != nil {
				ctx, cancel := context.WithTimeout(context.Background(), opts.ShutdownTimeout)
				err = s.internal.Shutdown(ctx)
				cancel()
			}
			return errors.Join(err, c.Close())
		},
	})
	return s, nil
}

// InternalHandler returns the handler of a cache's internal listener:
// eviction (DELETE /p/<photo ID>, see EvictHandler) and pushes of new
// images (PUT /p/<photo ID>/<size>[.webp], see PushHandler) for gateways,
// and GET /metrics for operators. With checkRoles, the listener must be TLS with verified
// client certificates from the cluster CA (pki.Node.ServerTLS): the
// caller's role is read from its certificate, and a caller of another
// role gets 403. Without, every caller is served: an --insecure cluster.
func (c *Cache) InternalHandler(checkRoles bool) http.Handler {
	reg := c.Registry()
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	evict, push := c.EvictHandler(), c.PushHandler()
	allowed := func(w http.ResponseWriter, r *http.Request, role pki.Role) bool {
		if !checkRoles {
			return true
		}
		id, err := pki.PeerIdentity(r.TLS)
		if err != nil {
			imagehttp.WriteJSON(w, http.StatusUnauthorized, map[string]any{"error": "a client certificate from the cluster CA is required"})
			return false
		}
		if id.Role != role {
			imagehttp.WriteJSON(w, http.StatusForbidden, map[string]any{"error": fmt.Sprintf("%s may not call this endpoint (%s only)", id, role)})
			return false
		}
		return true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, needle.ImagePathPrefix):
			if !allowed(w, r, pki.RoleGateway) {
				return
			}
			switch r.Method {
			case http.MethodDelete:
				evict.ServeHTTP(w, r)
			case http.MethodPut:
				push.ServeHTTP(w, r)
			default:
				c.metrics.countStatus(imagehttp.MethodNotAllowed(w, "DELETE, PUT"))
			}
		case r.URL.Path == "/metrics":
			if allowed(w, r, pki.RoleOperator) {
				metrics.ServeHTTP(w, r)
			}
		default:
			imagehttp.NoRoute(w)
		}
	})
}

// InternalAddr returns the address of the internal listener, nil without
// one.
func (s *Server) InternalAddr() net.Addr {
	if s.internal == nil {
		return nil
	}
	return s.internal.Addr()
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
	internal := ""
	if a := s.InternalAddr(); a != nil {
		internal = a.String()
	}
	s.opts.Logger.Info("cache serving", "http", s.Addr().String(), "internal", internal, "internal_tls", s.opts.InternalTLS != nil,
		"capacity", s.cache.opts.Capacity, "memfd", s.cache.arena != nil, "memfd_min", s.cache.opts.MemfdMin, "nodes", len(s.cache.opts.Nodes), "self", s.cache.opts.Self)
	if s.internal == nil {
		return s.http.Serve(ctx)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.internal.Serve(ctx) }()
	err := s.http.Serve(ctx)
	ierr := <-errc
	if errors.Is(ierr, serve.ErrClosed) {
		ierr = nil
	}
	return errors.Join(err, ierr)
}

// Shutdown stops accepting connections, waits for requests in flight
// (misses wait for their fetch) until ctx ends, then closes what is left
// and closes the Cache. It is safe to call more than once and from
// several goroutines: later calls wait for the first to finish (or for
// their own ctx) and return its result.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }
