package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/haybale/haybale/cache"
	"github.com/haybale/haybale/directory"
	"github.com/haybale/haybale/gateway"
	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/serve"
	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/resizer"
	"github.com/haybale/haybale/store"
	"github.com/haybale/haybale/store/volume"
)

// serverFlags are the flags of `haybale server`.
type serverFlags struct {
	dir             string
	httpAddr        string
	publicURL       string
	directoryHTTP   string
	apiKeyFile      string
	cacheCapacity   byteSize
	volumeSizeLimit byteSize
	minFreeSpace    byteSize
	maxUpload       byteSize
	maxPixels       pixelCount
	shutdownTimeout time.Duration
	publicUploads   bool
	directReads     bool
	eventLoop       bool
	limits          uploadLimitFlags
	log             logFlags
}

func (f *serverFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.dir, "dir", "haybale-data", "data directory: the store's volumes in <dir>/store, the directory's state in <dir>/directory (created if missing)")
	fs.StringVar(&f.httpAddr, "http", "127.0.0.1:8000", "address of the front HTTP server: the web page, /photos, the images under /p/, /healthz, /metrics (another address than loopback needs --api-key-file or --public-uploads)")
	fs.BoolVar(&f.publicUploads, "public-uploads", false, "let anyone who reaches a non-loopback --http upload and delete photos, without an API key")
	fs.StringVar(&f.publicURL, "public-url", "", "base URL under which browsers reach the front server; image URLs point at it (default http://localhost:<port of --http>)")
	fs.StringVar(&f.directoryHTTP, "directory-http", "127.0.0.1:0", "address of the directory's status page (port 0: any free port, printed at start)")
	fs.StringVar(&f.apiKeyFile, "api-key-file", "", "file holding the API key that uploads and deletes must send as 'Authorization: Bearer <key>' (none: open)")
	f.cacheCapacity = byteSize(256 << 20)
	fs.Var(&f.cacheCapacity, "cache-capacity", "memory for cached images, e.g. 256MiB or 2GiB")
	f.volumeSizeLimit = byteSize(volume.MaxSize)
	fs.Var(&f.volumeSizeLimit, "volume-size-limit", "size at which a volume turns read-only, e.g. 32GiB or 500MB (at most 32GiB)")
	f.minFreeSpace = byteSize(256 << 20)
	fs.Var(&f.minFreeSpace, "min-free-space", "free disk space below which no new volume is allocated")
	f.maxUpload = byteSize(resizer.DefaultMaxBytes)
	fs.Var(&f.maxUpload, "max-upload", "largest accepted upload, e.g. 32MiB")
	f.maxPixels = pixelCount(resizer.DefaultMaxPixels)
	fs.Var(&f.maxPixels, "max-pixels", "largest accepted image in pixels, e.g. 80MP")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long SIGTERM waits for requests in flight before closing connections")
	fs.BoolVar(&f.directReads, "direct-reads", true, "the store reads images of 32 KiB or more that are not in the page cache with O_DIRECT, leaving the page cache to images read more than once, as haybale store does (file systems that refuse O_DIRECT read through the page cache, with a warning in the log)")
	fs.BoolVar(&f.eventLoop, "event-loop", true, "serve the store's HTTP listener (where the cache reads the images it misses) on event loops, one per core, as haybale store does (Linux only; --event-loop=false: fasthttp); the front port stays on net/http, since it takes uploads and the loops take no request bodies")
	f.limits.register(fs)
	f.log.register(fs)
}

func (f *serverFlags) validate() error {
	if err := f.limits.validate(); err != nil {
		return err
	}
	switch {
	case f.dir == "":
		return fmt.Errorf("--dir must not be empty")
	case f.cacheCapacity <= 0:
		return fmt.Errorf("--cache-capacity %v: must be more than 0", f.cacheCapacity)
	case f.volumeSizeLimit <= 0 || int64(f.volumeSizeLimit) > volume.MaxSize:
		return fmt.Errorf("--volume-size-limit %v: must be more than 0 and at most %v", f.volumeSizeLimit, byteSize(volume.MaxSize))
	case f.maxUpload <= 0:
		return fmt.Errorf("--max-upload %v: must be more than 0", f.maxUpload)
	case f.maxPixels <= 0:
		return fmt.Errorf("--max-pixels %v: must be more than 0", f.maxPixels)
	case f.publicURL != "" && !strings.HasPrefix(f.publicURL, "http://") && !strings.HasPrefix(f.publicURL, "https://"):
		return fmt.Errorf("--public-url %q: want an absolute http:// or https:// URL", f.publicURL)
	}
	return nil
}

func newServerCmd() *cobra.Command {
	var f serverFlags
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a whole haybale on one machine: directory, store, cache and gateway in one process",
		Long: `server runs every role in one process, with replication 1: a directory
(state in <dir>/directory), a store (volumes in <dir>/store), a cache and a
gateway. One front port (--http) serves the web page, the API under /photos
and the images under /p/ (through the cache, which reads from the store);
the directory's image URLs point at --public-url, the front port as browsers
see it.

The front port listens on 127.0.0.1 unless --http says otherwise; on any
other address the server refuses to start without --api-key-file (uploads
and deletes then need the key) or --public-uploads (anyone may upload).

The store's HTTP listener, on loopback (the cache reads the images it
misses from it), is served on event loops as haybale store serves it
(--event-loop, on by default); the front port is served by net/http.

GET /healthz on the front port answers 200 once the store's volumes are
loaded and the directory can assign keys, and 503 before that and while
shutting down. Ctrl-C or SIGTERM drains requests in flight and closes
everything cleanly; starting again over the same --dir serves every photo
uploaded before.`,
		Example: "  haybale server\n  haybale server --dir /srv/haybale --http :8000 --api-key-file /etc/haybale/api-key --public-url https://photos.example.com",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.validate(); err != nil {
				return err
			}
			return runServer(cmd.Context(), &f, cmd.OutOrStdout())
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// runServer wires the four roles together, from the same start helpers
// as the single-role commands, and serves until ctx ends. The roles start
// in dependency order (directory, store, cache and gateway) and stop in the
// reverse order, so requests in flight at the front finish before the
// store and the directory close.
//
// The internal plane needs no certificates from the operator: every
// internal listener is on loopback, and the gRPC servers and the cache's
// eviction listener use mutual TLS with certificates issued at each start
// by a CA kept in <dir>/certs (created on first start).
func runServer(ctx context.Context, f *serverFlags, out io.Writer) (err error) {
	logger, err := f.log.logger()
	if err != nil {
		return err
	}
	dataDir, err := filepath.Abs(f.dir)
	if err != nil {
		return err
	}
	dirDir, storeDir, certsDir := filepath.Join(dataDir, "directory"), filepath.Join(dataDir, "store"), filepath.Join(dataDir, "certs")
	apiKey, err := loadAPIKey(f.apiKeyFile)
	if err != nil {
		return err
	}

	// The front port is bound first: a port in use fails before anything
	// is opened, and --http with port 0 learns its port for the URLs.
	front, err := net.Listen("tcp", f.httpAddr)
	if err != nil {
		return fmt.Errorf("--http: %w", err)
	}
	defer front.Close()
	public := reachableFromElsewhere(front.Addr().String())
	if public && apiKey == "" && !f.publicUploads {
		return fmt.Errorf("--http %s is reachable from other machines, and anyone there could upload and delete photos: set --api-key-file, or pass --public-uploads to allow it", front.Addr())
	}
	decodeMemory, err := f.limits.decodeBudget(logger, int64(f.cacheCapacity))
	if err != nil {
		return err
	}
	publicURL := strings.TrimSuffix(f.publicURL, "/")
	if publicURL == "" {
		publicURL = defaultPublicURL(front.Addr())
	}

	ca, err := loadOrCreateLocalCA(certsDir)
	if err != nil {
		return err
	}
	g := newGroup()
	defer func() {
		if stopErr := g.stop(); err == nil && ctx.Err() == nil {
			err = stopErr
		}
	}()

	// Directory, replication 1, gRPC on loopback only.
	if err := os.MkdirAll(dirDir, 0o755); err != nil {
		return err
	}
	secret, err := token.LoadOrCreateSecret(filepath.Join(dirDir, directory.SecretFile))
	if err != nil {
		return err
	}
	dirCreds, err := localCredentials(ca, pki.RoleDirectory, "directory")
	if err != nil {
		return err
	}
	dir, err := startDirectory(g, directory.Options{
		Dir:               dirDir,
		GRPCAddr:          "127.0.0.1:0",
		HTTPAddr:          f.directoryHTTP,
		Replication:       1,
		VolumeSizeLimit:   uint64(f.volumeSizeLimit),
		MinStoreFreeBytes: uint64(f.minFreeSpace),
		CacheNodes:        []string{publicURL},
		Secret:            secret,
		Credentials:       dirCreds,
		Logger:            logger.With("role", "directory"),
	})
	if err != nil {
		return err
	}
	dirAddr := dir.GRPCAddr().String()

	// Store, joined to the directory, checking its write tokens. Its
	// certificate names the ID its data folder keeps.
	signer, err := token.NewSigner(secret)
	if err != nil {
		return err
	}
	sr, err := startStore(ctx, g, storeRoleConfig{
		dir:             storeDir,
		httpAddr:        "127.0.0.1:0",
		grpcAddr:        "127.0.0.1:0",
		volumeSizeLimit: int64(f.volumeSizeLimit),
		shutdownTimeout: f.shutdownTimeout,
		directReads:     f.directReads,
		eventLoop:       f.eventLoop,
		authorizer:      signer,
		logger:          logger.With("role", "store"),
		directory:       dirAddr,
		advertise:       func(a net.Addr) string { return a.String() },
		minBackoff:      50 * time.Millisecond,
		maxBackoff:      2 * time.Second,
		onOpen: func(st *store.Store, cfg *storeRoleConfig) error {
			id, err := store.LoadOrCreateStoreID(st.FS(), st.Dir(), "")
			if err != nil {
				return err
			}
			cfg.creds, err = localCredentials(ca, pki.RoleStore, id)
			return err
		},
	})
	if err != nil {
		return err
	}

	// Cache and gateway share one metrics registry and are served
	// together on the front port; each calls the directory with its own
	// role.
	cacheCreds, err := localCredentials(ca, pki.RoleCache, "cache")
	if err != nil {
		return err
	}
	gwCreds, err := localCredentials(ca, pki.RoleGateway, "gateway")
	if err != nil {
		return err
	}
	cacheCl, err := newClusterClient(g, dirAddr, cacheCreds, nil, 0, logger.With("role", "cache"))
	if err != nil {
		return err
	}
	gwCl, err := newClusterClient(g, dirAddr, gwCreds, nil, 0, logger.With("role", "gateway"))
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ch, err := newCache(cacheCl, cache.Options{
		Capacity: int64(f.cacheCapacity),
		Logger:   logger.With("role", "cache"),
		Registry: reg,
	})
	if err != nil {
		return err
	}
	g.onStop(func() { ch.Close() })
	evictURL, err := serveCacheInternal(g, ch, cacheCreds, f.shutdownTimeout, logger.With("role", "cache"))
	if err != nil {
		return err
	}
	gw, err := newGateway(gwCl, gatewayRoleConfig{
		apiKey: apiKey,
		// One cache node owns every photo, whatever it is called.
		cacheNodes:     []string{"local"},
		cacheEvictURLs: []string{evictURL},
		cacheHTTP:      internalHTTPClient(gwCreds, pki.RoleCache),
		maxUpload:      int64(f.maxUpload),
		maxPixels:      int64(f.maxPixels),
		decodeMemory:   decodeMemory,
		noWebP:         !f.limits.webp,
		recent:         gateway.DefaultRecentUploads,
		logger:         logger.With("role", "gateway"),
		opts: gateway.Options{
			Registry:       reg,
			AllowedOrigins: serverOrigins(f.limits.allowedOrigins, publicURL),
			Public:         public,
		},
	})
	if err != nil {
		return err
	}
	ready := serveFront(g, front, gw.Handler(), ch.Handler(), f.shutdownTimeout, logger)

	if err := waitReady(ctx, sr.st, dir, g.failed); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	ready.Store(true)
	printReady(out, publicURL, advertiseLoopback(dir.HTTPAddr()), dataDir, storeDir, dirDir)

	if err := g.wait(ctx); err != nil {
		return err
	}
	logger.Info("shutting down")
	fmt.Fprintln(out, "haybale is shutting down.")
	return nil
}

// serveCacheInternal serves the cache's internal handler (eviction) on a
// loopback listener with mutual TLS, in g, and returns its URL. The
// gateway is its only caller.
func serveCacheInternal(g *group, ch *cache.Cache, creds *rpc.Credentials, shutdownTimeout time.Duration, logger *slog.Logger) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := serve.New(tls.NewListener(ln, creds.Node().ServerTLS()), ch.InternalHandler(true), serve.Options{
		Name: "cache internal", Logger: logger, ShutdownTimeout: shutdownTimeout,
	})
	g.serve("cache internal", srv.Serve)
	return "https://" + ln.Addr().String(), nil
}

// serveFront serves the front port in g: images to the cache, the rest to
// the gateway. The returned flag makes /healthz answer 200; until it is
// set, and while draining, /healthz answers 503.
func serveFront(g *group, front net.Listener, gw, images http.Handler, shutdownTimeout time.Duration, logger *slog.Logger) *atomic.Bool {
	var ready, draining atomic.Bool
	srv := &http.Server{
		Handler:           frontHandler(gw, images, &ready, &draining),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		WriteTimeout:      3 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	g.serve("front", func(runCtx context.Context) error {
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(front) }()
		select {
		case err := <-errc:
			return err
		case <-runCtx.Done():
		}
		draining.Store(true)
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
		<-errc
		return nil
	})
	return &ready
}

// printReady tells the person who started `haybale server` where
// everything is.
func printReady(out io.Writer, publicURL, directoryHTTP, dataDir, storeDir, dirDir string) {
	fmt.Fprintf(out, `haybale is ready.
  Web page:      %[1]s/  (open it in a browser to upload photos)
  API:           %[1]s/photos
  Images:        %[1]s/p/<photo ID>/<t|s|m|l>
  Health:        %[1]s/healthz
  Directory:     http://%[2]s/  (status page)
  Data:          %[3]s  (store: %[4]s, directory: %[5]s)
Press Ctrl-C to stop.
`, publicURL, directoryHTTP, dataDir, storeDir, dirDir)
}

// loadOrCreateLocalCA returns the CA of `haybale server` in dir, creating
// it on first use. Its key never leaves the data folder.
func loadOrCreateLocalCA(dir string) (*pki.CA, error) {
	ca, err := pki.LoadCA(dir)
	if err == nil {
		return ca, nil
	}
	if _, statErr := os.Stat(filepath.Join(dir, pki.CACertFile)); !errors.Is(statErr, fs.ErrNotExist) {
		return nil, fmt.Errorf("the local CA in %s: %w", dir, err)
	}
	if ca, err = pki.NewCA("haybale server local CA", 0); err != nil {
		return nil, err
	}
	if err := ca.Save(dir); err != nil {
		return nil, err
	}
	return ca, nil
}

// localCredentials issues, in memory, a certificate of ca for role/name
// valid on loopback, and returns it as credentials.
func localCredentials(ca *pki.CA, role pki.Role, name string) (*rpc.Credentials, error) {
	is, err := ca.Issue(pki.IssueOptions{Identity: pki.Identity{Role: role, Name: name}, Hosts: []string{"127.0.0.1", "::1", "localhost"}})
	if err != nil {
		return nil, err
	}
	node, err := ca.Node(is)
	if err != nil {
		return nil, err
	}
	return rpc.TLS(node), nil
}

// waitReady polls until the store has loaded its volumes and the directory
// can assign keys (the store is alive and a writable volume exists, which
// the first Assign allocates on a fresh data directory).
func waitReady(ctx context.Context, st *store.Store, dir *directory.Server, failed <-chan error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if st.Ready() && storeAlive(dir) {
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := dir.Directory().Assign(actx, 1)
			cancel()
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-failed:
			return err
		case <-tick.C:
		}
	}
}

// storeAlive reports whether the directory sees a live store.
func storeAlive(dir *directory.Server) bool {
	for _, s := range dir.Status().Stores {
		if s.State == "alive" {
			return true
		}
	}
	return false
}

// frontHandler routes the front port: images to the cache, /healthz and
// /readyz to the readiness of the whole process, the rest to the gateway.
func frontHandler(gw, images http.Handler, ready, draining *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/p/", images)
	health := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		switch {
		case draining.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"status":"shutting down"}`+"\n")
		case !ready.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"status":"starting"}`+"\n")
		default:
			io.WriteString(w, `{"status":"ok"}`+"\n")
		}
	}
	mux.HandleFunc("GET /healthz", health)
	mux.HandleFunc("GET /readyz", health)
	mux.Handle("/", gw)
	return mux
}

// defaultPublicURL is the front server's URL as a browser on this machine
// reaches it: http://localhost:<port> for a wildcard or loopback address,
// else the bound host.
func defaultPublicURL(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return "http://" + a.String()
	}
	if ip := net.ParseIP(host); host == "" || ip == nil || ip.IsUnspecified() || ip.IsLoopback() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// advertiseLoopback turns a bound address into one this machine can dial:
// a wildcard host becomes 127.0.0.1 (Go's wildcard listeners are dual-stack).
func advertiseLoopback(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
