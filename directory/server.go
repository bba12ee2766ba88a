package directory

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/haybale/haybale/internal/serve"
	"github.com/haybale/haybale/internal/token"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = serve.ErrClosed

// Server runs a Directory: it opens the state, binds the gRPC and HTTP
// listeners, serves the gRPC adapter (grpc.go) and the HTTP pages
// (http.go) through internal/serve, and closes everything on shutdown.
// Without Options.Raft it is a single node whose FSM persists in its state
// file; with it, a member of a raft cluster (see Raft). It is safe for
// concurrent use; Serve is called once.
type Server struct {
	opts   Options
	d      *Directory
	fsm    *FSM
	raft   *Raft // nil on a single node
	local  *localLog
	stores *grpcStores
	fwd    *forwarder // nil on a single node
	grpcLn net.Listener
	http   *serve.HTTP
}

// NewServer opens the state in opts.Dir and binds both listeners (and, in
// a cluster, the raft transport); nothing is served until Serve. The bound
// addresses are known at once.
func NewServer(opts Options) (_ *Server, err error) {
	if opts.Dir == "" {
		return nil, errors.New("directory: no data directory")
	}
	opts = opts.withDefaults()
	if err := makeDir(opts.Dir); err != nil {
		return nil, err
	}
	if len(opts.Secret) == 0 {
		if opts.Secret, err = token.LoadOrCreateSecret(filepath.Join(opts.Dir, SecretFile)); err != nil {
			return nil, fmt.Errorf("directory: %w", err)
		}
	}
	s := &Server{opts: opts, stores: newGRPCStores(opts.Credentials)}
	var closers []func() error
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()
	closers = append(closers, s.stores.Close)
	if s.grpcLn, err = net.Listen("tcp", opts.GRPCAddr); err != nil {
		return nil, fmt.Errorf("directory: gRPC listener: %w", err)
	}
	closers = append(closers, s.grpcLn.Close)
	httpLn, err := serve.Listen("directory HTTP", opts.HTTPAddr)
	if err != nil {
		return nil, err
	}
	closers = append(closers, httpLn.Close)

	var log Log
	if opts.Raft == nil {
		if s.fsm, err = OpenFSM(filepath.Join(opts.Dir, StateFile)); err != nil {
			return nil, err
		}
		closers = append(closers, s.fsm.Close)
		s.local = newLocalLog(s.fsm)
		log = s.local
	} else {
		s.fsm = OpenMemoryFSM()
		ro := *opts.Raft
		ro.Dir = cmpOr(ro.Dir, filepath.Join(opts.Dir, "raft"))
		ro.Logger = opts.Logger
		ro.Credentials = opts.Credentials
		ro.Node = NodeRecord{ID: ro.ID, GRPCAddr: advertised(s.grpcLn.Addr(), opts.AdvertiseGRPC), HTTPAddr: advertised(httpLn.Addr(), opts.AdvertiseHTTP)}
		if s.raft, err = OpenRaft(ro, s.fsm); err != nil {
			return nil, err
		}
		closers = append(closers, s.raft.Close)
		log = s.raft
	}
	if s.d, err = NewDirectory(opts, s.fsm, log, s.stores); err != nil {
		return nil, err
	}
	var members Membership
	if s.raft != nil {
		members = s.raft
		s.fwd = newForwarder(opts.Credentials, advertised(s.grpcLn.Addr(), opts.AdvertiseGRPC))
		closers = append(closers, s.fwd.Close)
	}
	grpcSrv, err := newGRPCServer(s.d, members, s.fwd)
	if err != nil {
		return nil, err
	}
	s.http = serve.New(httpLn, s.httpHandler(), serve.Options{
		Name:         "directory",
		Logger:       opts.Logger,
		WriteTimeout: 60 * time.Second,
		GRPC:         grpcSrv,
		GRPCListener: s.grpcLn,
		OnDrain:      s.d.cancel,
		AfterDrain:   s.closeAll,
	})
	return s, nil
}

// cmpOr returns a unless it is empty, else b.
func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// advertised is the address clients are told for a listener: adv when
// set, else the bound address.
func advertised(bound net.Addr, adv string) string { return cmpOr(adv, bound.String()) }

// closeAll stops the directory's work and closes the log and the state,
// after the servers drained.
func (s *Server) closeAll() error {
	s.d.Close()
	var errs []error
	if s.raft != nil {
		errs = append(errs, s.raft.Close())
	}
	if s.local != nil {
		s.local.closed.Store(true)
	}
	if s.fwd != nil {
		errs = append(errs, s.fwd.Close())
	}
	errs = append(errs, s.stores.Close(), s.fsm.Close())
	return errors.Join(errs...)
}

// GRPCAddr returns the address the gRPC server listens on.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLn.Addr() }

// HTTPAddr returns the address the HTTP server listens on.
func (s *Server) HTTPAddr() net.Addr { return s.http.Addr() }

// FSM returns the directory's state machine.
func (s *Server) FSM() *FSM { return s.fsm }

// Directory returns the domain logic, for in-process callers.
func (s *Server) Directory() *Directory { return s.d }

// Raft returns the raft node, nil on a single node.
func (s *Server) Raft() *Raft { return s.raft }

// Serve serves gRPC and HTTP until ctx is cancelled, Shutdown is called or
// a listener fails; on cancellation it shuts down as Shutdown does, waiting
// at most 30 seconds. It returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	s.opts.Logger.Info("directory serving", "grpc", s.GRPCAddr().String(), "http", s.HTTPAddr().String(),
		"replication", s.opts.Replication, "key_high_water", s.fsm.HighWater(), "raft", s.raft != nil)
	return s.http.Serve(ctx)
}

// Shutdown stops the servers, ending heartbeat streams and waiting for
// other requests in flight until ctx is done, then closes the state.
// Calling it again waits for the first call and returns its result.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }
