// Package serve runs the servers of haybale's roles with the lifecycle
// they share: the listeners are bound first (so their addresses are known
// before serving starts), requests are served until the context is
// cancelled or Shutdown is called, then requests in flight are drained for
// a bounded time, the connections left are cut, and the role's own
// clean-up runs once. A role serves HTTP, and optionally gRPC beside it.
//
// HTTP is served by net/http, or, for a role that sets Options.Fast (the
// store's image reads), by fasthttp: the fast handler answers the requests
// it owns and hands every other one to the role's http.Handler through
// fasthttpadaptor, so the role keeps one handler for its other endpoints.
// The fast handlers of the store and the cache send large images from a
// file with SendFile over the plain TCP connections RawTCP gives access to.
//
// A role that sets Options.Loop serves HTTP on event loops instead
// (internal/evloop): this package still binds and accepts (so MaxConns
// works as before) and hands each connection to a loop.
package serve

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

	"github.com/valyala/fasthttp"
	"google.golang.org/grpc"

	"github.com/haybale/haybale/internal/evloop"
)

// ErrClosed is returned by Serve when Shutdown ran before it.
var ErrClosed = errors.New("serve: server closed")

// ErrUnverified is returned by SendFileVerified when its Verifier reports
// that the file's bytes are no longer those verified: the rest of the
// answer was not sent.
var ErrUnverified = errors.New("serve: the file's bytes are no longer those verified; answer cut short")

// Options configure an HTTP server. Zero values take the documented
// defaults.
type Options struct {
	// Name names the role in logs and errors ("cache", "gateway").
	Name string
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
	// ShutdownTimeout bounds how long Serve drains requests in flight once
	// its context is cancelled; default 30 s.
	ShutdownTimeout time.Duration
	// ReadHeaderTimeout bounds reading a request's headers; default 10 s.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request; default none.
	ReadTimeout time.Duration
	// WriteTimeout bounds a request from the end of its headers to the end
	// of its answer; default none.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long; default
	// 120 s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's headers; default 64 KiB.
	MaxHeaderBytes int
	// OnDrain, when set, runs as shutdown starts (for example to make a
	// readiness check fail).
	OnDrain func()
	// AfterDrain, when set, runs once after the requests have drained (for
	// example to close what the handler used); its error is returned by
	// Shutdown.
	AfterDrain func() error
	// Fast, when set, serves the HTTP connections with fasthttp instead of
	// net/http. Fast is called for every request and reports whether it
	// answered it; the requests it declines go to the http.Handler, which
	// sees them as net/http requests. It is for a role's hot path, where
	// net/http's per-request cost is most of the work (the store's image
	// GETs); fasthttp reuses the RequestCtx, so Fast must not keep it or
	// anything from it after returning. Under fasthttp a request's line
	// and headers must fit in min(MaxHeaderBytes, 16 KiB).
	Fast func(ctx *fasthttp.RequestCtx) bool
	// Loop, when set (and evloop.Supported), serves the HTTP connections
	// on event loops (internal/evloop) instead: Loop answers the
	// requests it owns on the loops, and the http.Handler the others off
	// them. Fast is then unused. The loops apply ReadHeaderTimeout,
	// IdleTimeout, WriteTimeout (from an answer's turn to be written),
	// MaxHeaderBytes (up to 16 KiB, as under fasthttp) and MaxConns.
	Loop evloop.Handler
	// GRPC, when set, is served on GRPCListener beside the HTTP server and
	// drained with it (GracefulStop, then Stop when time runs out).
	GRPC         *grpc.Server
	GRPCListener net.Listener
	// MaxConns bounds the HTTP connections served at once; further ones
	// wait in the kernel's accept queue until one ends. 0 means no bound.
	// The served connections are the listener's own, not wrappers, so
	// the fast path's writev and sendfile still apply to them.
	MaxConns int
}

func (o Options) withDefaults() Options {
	if o.Name == "" {
		o.Name = "http"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 30 * time.Second
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 120 * time.Second
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	return o
}

// HTTP is an HTTP server with a drained shutdown. It is safe for
// concurrent use; Serve is called at most once.
type HTTP struct {
	opts    Options
	ln      net.Listener
	httpSrv *http.Server
	fastSrv *fasthttp.Server // instead of httpSrv when Options.Fast is set
	loopSrv *evloop.Server   // instead of both when Options.Loop is set

	serving      atomic.Bool
	draining     atomic.Bool
	shutdownOnce sync.Once
	stopping     chan struct{} // closed when Shutdown starts
	shutdownDone chan struct{} // closed when Shutdown has finished
	shutdownErr  error         // written before shutdownDone is closed
}

// New returns a server of h on ln, which it takes ownership of. Nothing
// is served until Serve.
func New(ln net.Listener, h http.Handler, opts Options) *HTTP {
	opts = opts.withDefaults()
	var limit *limitListener
	if opts.MaxConns > 0 {
		limit = newLimitListener(ln, opts.MaxConns)
		ln = limit
	}
	if opts.Loop != nil && evloop.Supported {
		var onClose func()
		if limit != nil {
			onClose = limit.connEnded
		}
		ls, err := evloop.New(opts.Loop, h, evloop.Options{
			ReadHeaderTimeout: opts.ReadHeaderTimeout,
			IdleTimeout:       opts.IdleTimeout,
			WriteTimeout:      opts.WriteTimeout,
			// As under fasthttp: a request's line and headers fit in
			// 16 KiB, so that a connection's read buffer stays small.
			MaxHeaderBytes: min(opts.MaxHeaderBytes, maxFastReadBuffer),
			Logger:         opts.Logger,
			OnClose:        onClose,
		})
		if err == nil {
			return &HTTP{
				opts:         opts,
				ln:           ln,
				loopSrv:      ls,
				stopping:     make(chan struct{}),
				shutdownDone: make(chan struct{}),
			}
		}
		opts.Logger.Warn(opts.Name+": event loops unavailable; serving with fasthttp", "err", err)
	}
	if opts.Fast != nil {
		fs := newFast(h, opts)
		if limit != nil {
			fs.ConnState = func(_ net.Conn, st fasthttp.ConnState) {
				if st == fasthttp.StateClosed || st == fasthttp.StateHijacked {
					limit.connEnded()
				}
			}
		}
		return &HTTP{
			opts:         opts,
			ln:           ln,
			fastSrv:      fs,
			stopping:     make(chan struct{}),
			shutdownDone: make(chan struct{}),
		}
	}
	var connState func(net.Conn, http.ConnState)
	if limit != nil {
		connState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				limit.connEnded()
			}
		}
	}
	return &HTTP{
		opts: opts,
		ln:   ln,
		httpSrv: &http.Server{
			ConnState:         connState,
			Handler:           h,
			ReadHeaderTimeout: opts.ReadHeaderTimeout,
			ReadTimeout:       opts.ReadTimeout,
			WriteTimeout:      opts.WriteTimeout,
			IdleTimeout:       opts.IdleTimeout,
			MaxHeaderBytes:    opts.MaxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
		},
		stopping:     make(chan struct{}),
		shutdownDone: make(chan struct{}),
	}
}

// Listen binds addr for New, with an error that names the role.
func Listen(name, addr string) (net.Listener, error) {
	if addr == "" {
		return nil, fmt.Errorf("%s: an address to listen on is required", name)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen: %w", name, err)
	}
	return ln, nil
}

// Addr returns the address the server listens on.
func (s *HTTP) Addr() net.Addr { return s.ln.Addr() }

// Draining reports whether shutdown has started.
func (s *HTTP) Draining() bool { return s.draining.Load() }

// Serve serves until ctx is cancelled, Shutdown is called, or the listener
// fails. On cancellation it shuts down as Shutdown does, waiting at most
// Options.ShutdownTimeout for requests in flight. It returns nil after a
// clean shutdown, and ErrClosed when Shutdown ran before it.
func (s *HTTP) Serve(ctx context.Context) error {
	if !s.serving.CompareAndSwap(false, true) {
		return fmt.Errorf("%s: Serve called twice", s.opts.Name)
	}
	select {
	case <-s.stopping:
		return ErrClosed
	default:
	}
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Go(func() {
		if s.loopSrv != nil {
			errc <- s.serveLoop()
			return
		}
		if s.fastSrv != nil {
			errc <- s.serveFast()
			return
		}
		err := s.httpSrv.Serve(s.ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	})
	if s.opts.GRPC != nil {
		wg.Go(func() {
			err := s.opts.GRPC.Serve(s.opts.GRPCListener)
			if errors.Is(err, grpc.ErrServerStopped) {
				err = nil
			}
			errc <- err
		})
	}
	var serveErr error
	select {
	case <-ctx.Done():
		s.opts.Logger.Info(s.opts.Name+" shutting down: draining requests in flight", "timeout", s.opts.ShutdownTimeout)
	case <-s.stopping:
	case serveErr = <-errc:
		if serveErr != nil {
			serveErr = fmt.Errorf("%s: serve: %w", s.opts.Name, serveErr)
			s.opts.Logger.Error(s.opts.Name+" listener failed; shutting down", "err", serveErr)
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ShutdownTimeout)
	defer cancel()
	shutErr := s.Shutdown(sctx)
	wg.Wait()
	return errors.Join(serveErr, shutErr)
}

// Shutdown stops accepting connections, waits for requests in flight until
// ctx ends, cuts the connections left, then runs AfterDrain. It is safe to
// call more than once and from several goroutines: later calls wait for
// the first (or for their own ctx) and return its result.
func (s *HTTP) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		s.draining.Store(true)
		if s.opts.OnDrain != nil {
			s.opts.OnDrain()
		}
		close(s.stopping)
		var err error
		var wg sync.WaitGroup
		wg.Go(func() {
			if s.loopSrv != nil {
				err = s.shutdownLoop(ctx)
				return
			}
			if s.fastSrv != nil {
				err = s.shutdownFast(ctx)
				return
			}
			if herr := s.httpSrv.Shutdown(ctx); herr != nil {
				// Out of time: cut the connections still busy.
				err = fmt.Errorf("%s: drain: %w", s.opts.Name, herr)
				s.httpSrv.Close()
			}
		})
		if g := s.opts.GRPC; g != nil {
			wg.Go(func() {
				done := make(chan struct{})
				go func() {
					g.GracefulStop()
					close(done)
				}()
				select {
				case <-done:
				case <-ctx.Done():
					g.Stop()
					<-done
				}
			})
		}
		wg.Wait()
		s.ln.Close() // when Serve never ran
		if s.opts.GRPCListener != nil {
			s.opts.GRPCListener.Close()
		}
		if s.opts.AfterDrain != nil {
			err = errors.Join(err, s.opts.AfterDrain())
		}
		s.shutdownErr = err
		close(s.shutdownDone)
	})
	select {
	case <-s.shutdownDone:
		return s.shutdownErr
	case <-ctx.Done():
		return ctx.Err()
	}
}
