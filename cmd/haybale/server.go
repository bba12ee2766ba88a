package main

import (
	"context"
	"fmt"
	"io"
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
	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/directory"
	"github.com/haybale/haybale/gateway"
	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
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

// runServer wires the four roles together and serves until ctx ends. The
// roles start in dependency order (directory, store, cache and gateway) and
// stop in the reverse order, so requests in flight at the front finish
// before the store and the directory close.
func runServer(ctx context.Context, f *serverFlags, out io.Writer) (err error) {
	logger, err := f.log.logger()
	if err != nil {
		return err
	}
	dataDir, err := filepath.Abs(f.dir)
	if err != nil {
		return err
	}
	dirDir, storeDir := filepath.Join(dataDir, "directory"), filepath.Join(dataDir, "store")
	var apiKey string
	if f.apiKeyFile != "" {
		b, err := os.ReadFile(f.apiKeyFile)
		if err != nil {
			return fmt.Errorf("--api-key-file: %w", err)
		}
		if apiKey = strings.TrimSpace(string(b)); apiKey == "" {
			return fmt.Errorf("--api-key-file %s is empty", f.apiKeyFile)
		}
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
	decodeMemory, err := f.limits.decodeBudget(logger)
	if err != nil {
		return err
	}
	publicURL := strings.TrimSuffix(f.publicURL, "/")
	if publicURL == "" {
		publicURL = defaultPublicURL(front.Addr())
	}

	// stops runs the shutdown steps, last started first.
	var stops []func()
	defer func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}()
	failed := make(chan error, 4)
	serve := func(name string, run func(context.Context) error) {
		runCtx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := run(runCtx); err != nil {
				failed <- fmt.Errorf("%s: %w", name, err)
			}
		}()
		stops = append(stops, func() { cancel(); <-done })
	}

	// Directory, replication 1, gRPC on loopback only.
	if err := os.MkdirAll(dirDir, 0o755); err != nil {
		return err
	}
	secret, err := token.LoadOrCreateSecret(filepath.Join(dirDir, directory.SecretFile))
	if err != nil {
		return err
	}
	dir, err := directory.NewServer(directory.Options{
		Dir:               dirDir,
		GRPCAddr:          "127.0.0.1:0",
		HTTPAddr:          f.directoryHTTP,
		Replication:       1,
		VolumeSizeLimit:   uint64(f.volumeSizeLimit),
		MinStoreFreeBytes: uint64(f.minFreeSpace),
		CacheNodes:        []string{publicURL},
		Secret:            secret,
		Logger:            logger.With("role", "directory"),
	})
	if err != nil {
		return err
	}
	serve("directory", dir.Serve)
	dirAddr := dir.GRPCAddr().String()

	// Store, joined to the directory, checking its write tokens.
	st, err := store.Open(ctx, store.Options{Dir: storeDir, VolumeSizeLimit: int64(f.volumeSizeLimit), Logger: logger.With("role", "store")})
	if err != nil {
		return err
	}
	signer, err := token.NewSigner(secret)
	if err != nil {
		st.Close()
		return err
	}
	var hook corruptHook
	storeSrv, err := store.NewServer(st, store.ServerOptions{
		HTTPAddr:        "127.0.0.1:0",
		GRPCAddr:        "127.0.0.1:0",
		Logger:          logger.With("role", "store"),
		ShutdownTimeout: f.shutdownTimeout,
		Authorizer:      signer,
		OnCorrupt:       hook.report,
	})
	if err != nil {
		st.Close()
		return err
	}
	serve("store", storeSrv.Serve)
	hb, err := store.NewHeartbeater(st, store.HeartbeaterOptions{
		DirectoryAddr: dirAddr,
		GRPCAddr:      storeSrv.GRPCAddr().String(),
		HTTPAddr:      storeSrv.HTTPAddr().String(),
		MinBackoff:    50 * time.Millisecond,
		MaxBackoff:    2 * time.Second,
		Logger:        logger.With("role", "store"),
	})
	if err != nil {
		return err
	}
	hook.hb.Store(hb)
	serve("heartbeats", hb.Run)

	// Cache and gateway share one client of the directory and one metrics
	// registry, and are served together on the front port.
	cl, err := client.New(client.Options{Directory: dirAddr, Logger: logger.With("role", "client")})
	if err != nil {
		return err
	}
	stops = append(stops, func() { cl.Close() })
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ch, err := cache.New(cache.Options{
		Client:   cl,
		Capacity: int64(f.cacheCapacity),
		Logger:   logger.With("role", "cache"),
		Registry: reg,
	})
	if err != nil {
		return err
	}
	stops = append(stops, func() { ch.Close() })
	gw, err := gateway.New(gateway.Options{
		Client: cl,
		Resizer: resizer.New(resizer.Options{
			MaxBytes:     int64(f.maxUpload),
			MaxPixels:    int64(f.maxPixels),
			DecodeMemory: decodeMemory,
		}),
		APIKey:         apiKey,
		AllowedOrigins: serverOrigins(f.limits.allowedOrigins, publicURL),
		Public:         public,
		// Deletes evict the photo from the cache through the front port
		// itself; with one cache node it owns every photo, whatever the
		// node is called.
		CacheNodes:     []string{loopbackURL(front.Addr())},
		MaxUploadBytes: int64(f.maxUpload),
		Logger:         logger.With("role", "gateway"),
		Registry:       reg,
	})
	if err != nil {
		return err
	}
	var ready, draining atomic.Bool
	frontSrv := &http.Server{
		Handler:           frontHandler(gw.Handler(), ch.Handler(), &ready, &draining),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		WriteTimeout:      3 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	serve("front", func(runCtx context.Context) error {
		errc := make(chan error, 1)
		go func() { errc <- frontSrv.Serve(front) }()
		select {
		case err := <-errc:
			return err
		case <-runCtx.Done():
		}
		draining.Store(true)
		sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
		defer cancel()
		if err := frontSrv.Shutdown(sctx); err != nil {
			frontSrv.Close()
		}
		<-errc
		return nil
	})

	readyErr := waitReady(ctx, st, dir, failed)
	if readyErr != nil {
		if ctx.Err() != nil {
			return nil
		}
		return readyErr
	}
	ready.Store(true)
	fmt.Fprintf(out, `haybale is ready.
  Web page:      %[1]s/  (open it in a browser to upload photos)
  API:           %[1]s/photos
  Images:        %[1]s/p/<photo ID>/<t|s|m|l>
  Health:        %[1]s/healthz
  Directory:     http://%[2]s/  (status page)
  Data:          %[3]s  (store: %[4]s, directory: %[5]s)
Press Ctrl-C to stop.
`, publicURL, advertiseLoopback(dir.HTTPAddr()), dataDir, storeDir, dirDir)

	select {
	case <-ctx.Done():
		logger.Info("shutting down")
		fmt.Fprintln(out, "haybale is shutting down.")
		return nil
	case err := <-failed:
		return err
	}
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
			_, err := dir.Assign(actx, &directorypb.AssignRequest{Count: 1})
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

// loopbackURL is the front server's URL for requests from this process.
func loopbackURL(a net.Addr) string { return "http://" + advertiseLoopback(a) }

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
