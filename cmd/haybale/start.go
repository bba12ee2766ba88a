package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/haybale/haybale/cache"
	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/directory"
	"github.com/haybale/haybale/gateway"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/resizer"
	"github.com/haybale/haybale/store"
)

// The start helpers below build and start each role. The single-role
// commands (`haybale store`, `directory`, `cache`, `gateway`) and `haybale
// server` (all roles in one process) are made of the same helpers.

// group runs the servers of a process and stops them in the reverse order
// of their start, so that the front stops taking requests before what it
// depends on closes.
type group struct {
	stops  []func()
	failed chan error
}

func newGroup() *group { return &group{failed: make(chan error, 16)} }

// serve runs run in a goroutine until the group stops; an error it
// returns is reported by wait or stop.
func (g *group) serve(name string, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := run(ctx); err != nil {
			g.failed <- fmt.Errorf("%s: %w", name, err)
		}
	}()
	g.stops = append(g.stops, func() { cancel(); <-done })
}

// onStop adds a clean-up step, run when the group stops, before the steps
// added earlier.
func (g *group) onStop(fn func()) { g.stops = append(g.stops, fn) }

// wait blocks until ctx ends (nil) or a server fails (its error).
func (g *group) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-g.failed:
		return err
	}
}

// stop runs the stop steps, last added first, and returns the errors the
// servers reported.
func (g *group) stop() error {
	for i := len(g.stops) - 1; i >= 0; i-- {
		g.stops[i]()
	}
	g.stops = nil
	var errs []error
	for {
		select {
		case err := <-g.failed:
			errs = append(errs, err)
		default:
			return errors.Join(errs...)
		}
	}
}

// run waits for ctx or a failure, stops the group, and returns the first
// error.
func (g *group) run(ctx context.Context) error {
	err := g.wait(ctx)
	return errors.Join(err, g.stop())
}

// startDirectory opens the directory and serves it in g.
func startDirectory(g *group, opts directory.Options) (*directory.Server, error) {
	dir, err := directory.NewServer(opts)
	if err != nil {
		return nil, err
	}
	g.serve("directory", dir.Serve)
	return dir, nil
}

// storeRoleConfig configures startStore.
type storeRoleConfig struct {
	dir             string
	httpAddr        string
	grpcAddr        string
	volumeSizeLimit int64
	maxConns        int
	// eventLoop is store.ServerOptions.EventLoop.
	eventLoop       bool
	shutdownTimeout time.Duration
	// verifiedMaps is store.Options.VerifiedMappings (0: the default).
	verifiedMaps int
	// directReads and directWindow are store.Options.DirectReads and
	// DirectWindow.
	directReads  bool
	directWindow int
	authorizer   store.WriteAuthorizer
	creds        *rpc.Credentials
	logger       *slog.Logger
	// directory is the directory's gRPC address to join; empty runs the
	// store standalone.
	directory string
	// advertise turns a bound address into the one the other roles dial.
	advertise func(net.Addr) string
	publicURL string
	rack      string
	// ecPeers reads the shards of EC volumes this store lacks from the
	// peer stores the directory names (a cluster of several stores).
	ecPeers bool
	// minBackoff and maxBackoff bound the heartbeat retries; zero takes
	// the heartbeater's defaults.
	minBackoff, maxBackoff time.Duration
	// onOpen runs after the volumes are open and before anything is
	// served, with the store's ID (for `haybale server`, which issues the
	// store's certificate for it). It may replace creds.
	onOpen func(st *store.Store, cfg *storeRoleConfig) error
}

// storeRole is a started store.
type storeRole struct {
	st  *store.Store
	srv *store.Server
	hb  *store.Heartbeater // nil when standalone
}

// startStore opens the store's data folder, serves it in g, and joins the
// directory when one is configured. On a TLS plane the store's ID is the
// name its certificate gives.
func startStore(ctx context.Context, g *group, cfg storeRoleConfig) (*storeRole, error) {
	sopts := store.Options{Dir: cfg.dir, VolumeSizeLimit: cfg.volumeSizeLimit, Logger: cfg.logger, VerifiedMappings: cfg.verifiedMaps, DirectReads: cfg.directReads, DirectWindow: cfg.directWindow}
	// In a cluster, EC volumes read the shards this store lacks from the
	// stores the directory names; the store's own address is learnt once
	// its listeners are bound.
	var self atomic.Pointer[string]
	if cfg.ecPeers && cfg.directory != "" {
		peers, err := store.NewDirectoryShardPeers(store.DirectoryShardPeersOptions{
			DirectoryAddr: cfg.directory,
			Credentials:   cfg.creds,
			Self: func() string {
				if a := self.Load(); a != nil {
					return *a
				}
				return ""
			},
			Logger: cfg.logger,
		})
		if err != nil {
			return nil, err
		}
		g.onStop(func() { peers.Close() })
		sopts.ShardPeers = peers
	}
	st, err := store.Open(ctx, sopts)
	if err != nil {
		return nil, err
	}
	if cfg.onOpen != nil {
		if err := cfg.onOpen(st, &cfg); err != nil {
			st.Close()
			return nil, err
		}
	}
	var hook corruptHook
	srv, err := store.NewServer(st, store.ServerOptions{
		HTTPAddr:        cfg.httpAddr,
		GRPCAddr:        cfg.grpcAddr,
		MaxConns:        cfg.maxConns,
		EventLoop:       cfg.eventLoop,
		Logger:          cfg.logger,
		ShutdownTimeout: cfg.shutdownTimeout,
		Authorizer:      cfg.authorizer,
		Credentials:     cfg.creds,
		OnCorrupt:       hook.report,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	r := &storeRole{st: st, srv: srv}
	if cfg.advertise != nil {
		selfAddr := cfg.advertise(srv.GRPCAddr())
		self.Store(&selfAddr)
	}
	if cfg.directory == "" {
		g.serve("store", srv.Serve)
		return r, nil
	}
	storeID := ""
	if id, ok := cfg.creds.Identity(); ok {
		storeID = id.Name
	}
	hb, err := store.NewHeartbeater(st, store.HeartbeaterOptions{
		DirectoryAddr: cfg.directory,
		StoreID:       storeID,
		Credentials:   cfg.creds,
		GRPCAddr:      cfg.advertise(srv.GRPCAddr()),
		HTTPAddr:      cfg.advertise(srv.HTTPAddr()),
		PublicURL:     cfg.publicURL,
		Rack:          cfg.rack,
		MinBackoff:    cfg.minBackoff,
		MaxBackoff:    cfg.maxBackoff,
		Logger:        cfg.logger,
	})
	if err != nil {
		srv.Shutdown(ctx)
		return nil, err
	}
	hook.hb.Store(hb)
	r.hb = hb
	g.serve("store", srv.Serve)
	g.serve("heartbeats", hb.Run)
	cfg.logger.Info("joining the directory", "directory", cfg.directory, "store", hb.StoreID(), "rack", cfg.rack)
	return r, nil
}

// newClusterClient returns a client of the directory at addr with creds,
// closed when g stops.
func newClusterClient(g *group, addr string, creds *rpc.Credentials, httpClient *http.Client, lookupTTL time.Duration, logger *slog.Logger) (*client.Client, error) {
	cl, err := client.New(client.Options{Directory: addr, Credentials: creds, HTTPClient: httpClient, LookupTTL: lookupTTL, Logger: logger})
	if err != nil {
		return nil, err
	}
	g.onStop(func() { cl.Close() })
	return cl, nil
}

// gatewayRoleConfig configures newGateway.
type gatewayRoleConfig struct {
	apiKey         string
	cacheNodes     []string
	cacheEvictURLs []string
	cacheHTTP      *http.Client
	maxUpload      int64
	maxPixels      int64
	maxDecodes     int
	decodeMemory   int64
	noWebP         bool
	recent         int
	logger         *slog.Logger
	opts           gateway.Options // Registry, origins and the rest; the fields above win
}

// newGateway builds the gateway over cl.
func newGateway(cl *client.Client, cfg gatewayRoleConfig) (*gateway.Gateway, error) {
	o := cfg.opts
	o.Client = cl
	o.Resizer = resizer.New(resizer.Options{MaxBytes: cfg.maxUpload, MaxPixels: cfg.maxPixels, MaxConcurrent: cfg.maxDecodes, DecodeMemory: cfg.decodeMemory, NoWebP: cfg.noWebP})
	o.APIKey = cfg.apiKey
	o.CacheNodes = cfg.cacheNodes
	o.CacheEvictURLs = cfg.cacheEvictURLs
	o.CacheHTTPClient = cfg.cacheHTTP
	o.MaxUploadBytes = cfg.maxUpload
	o.RecentUploads = cfg.recent
	o.Logger = cfg.logger
	return gateway.New(o)
}

// newCache builds a cache over cl, closed when g stops unless a
// cache.Server takes it over.
func newCache(cl *client.Client, opts cache.Options) (*cache.Cache, error) {
	opts.Client = cl
	return cache.New(opts)
}

// loadAPIKey reads the API key file; empty file name means no key.
func loadAPIKey(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--api-key-file: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		return "", fmt.Errorf("--api-key-file %s is empty", file)
	}
	return key, nil
}
