package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/haybale/haybale/bench"
	"github.com/haybale/haybale/gateway"
	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/resizer"
)

// gatewayFlags are the flags of `haybale gateway`.
type gatewayFlags struct {
	directory       string
	httpAddr        string
	apiKeyFile      string
	cacheNodes      []string
	cacheInternal   []string
	maxUpload       byteSize
	maxPixels       pixelCount
	maxDecodes      int
	recent          int
	shutdownTimeout time.Duration
	tls             tlsFlags
	limits          uploadLimitFlags
	log             logFlags
}

func (f *gatewayFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.directory, "directory", "", "gRPC address HOST:PORT of the directory, or of every node of a directory cluster, comma-separated (required; the leader is found and followed)")
	fs.StringVar(&f.httpAddr, "http", ":8000", "address of the HTTP server (API, web page, /metrics, /healthz)")
	fs.StringVar(&f.apiKeyFile, "api-key-file", "", "file holding the API key that uploads and deletes must send as 'Authorization: Bearer <key>' (none: open)")
	fs.StringSliceVar(&f.cacheNodes, "cache-nodes", nil, "cache nodes (base URLs or host:port, comma-separated, listed exactly as the directory's --cache-nodes); deletes evict the photo from its owner")
	fs.StringSliceVar(&f.cacheInternal, "cache-internal", nil, "internal addresses (host:port, --internal of each cache) of the --cache-nodes, in the same order: evictions go there, with mutual TLS")
	f.maxUpload = byteSize(resizer.DefaultMaxBytes)
	fs.Var(&f.maxUpload, "max-upload", "largest accepted upload, e.g. 32MiB")
	f.maxPixels = pixelCount(resizer.DefaultMaxPixels)
	fs.Var(&f.maxPixels, "max-pixels", "largest accepted image in pixels (width×height from the header, checked before decoding), e.g. 80e6 or 80MP")
	fs.IntVar(&f.maxDecodes, "max-decodes", 0, "images decoded and resized at once, within --decode-memory (0: one per CPU)")
	fs.IntVar(&f.recent, "recent", gateway.DefaultRecentUploads, "recent uploads listed on the web page")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long SIGTERM waits for requests in flight before closing connections")
	f.tls.register(fs)
	f.limits.register(fs)
	f.log.register(fs)
}

func (f *gatewayFlags) validate() error {
	if err := f.limits.validate(); err != nil {
		return err
	}
	switch {
	case f.directory == "":
		return fmt.Errorf("--directory is required")
	case f.maxUpload <= 0:
		return fmt.Errorf("--max-upload %v: must be more than 0", f.maxUpload)
	case f.maxPixels <= 0:
		return fmt.Errorf("--max-pixels %v: must be more than 0", f.maxPixels)
	case f.maxDecodes < 0:
		return fmt.Errorf("--max-decodes %d: must not be negative", f.maxDecodes)
	case f.recent < 1:
		return fmt.Errorf("--recent %d: must be at least 1", f.recent)
	case len(f.cacheInternal) != len(f.cacheNodes):
		return fmt.Errorf("--cache-internal lists %d addresses for %d --cache-nodes: give each cache's internal address, in the same order", len(f.cacheInternal), len(f.cacheNodes))
	}
	return nil
}

func newGatewayCmd() *cobra.Command {
	var f gatewayFlags
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Serve the web-facing HTTP API: photo upload, info, delete and the upload page",
		Long: `gateway accepts photo uploads over HTTP (POST /photos, the raw image or the
multipart field "file"), resizes each into the four stored sizes and writes
them to every replica of a volume the directory assigns. It also answers
GET /photos/{id}, GET /photos/{id}/{size} (a redirect to the image URL) and
DELETE /photos/{id}, and serves a web page at / to upload and browse photos.

With --api-key-file, uploads and deletes need 'Authorization: Bearer <key>';
reads never do. Browser pages may upload only from the gateway's own origin
or --allowed-origins. Each image is admitted to decoding by an estimate of
its memory from its header, against --decode-memory; one over the whole
budget is refused with 413. SIGTERM or Ctrl-C drains requests in flight.`,
		Example: "  haybale gateway --certs-dir /etc/haybale/gateway-gw1 --directory dir1:7070 --http :8000 --api-key-file /etc/haybale/api-key \\\n" +
			"    --cache-nodes http://cache1:8100,http://cache2:8100 --cache-internal cache1:8101,cache2:8101",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.validate(); err != nil {
				return err
			}
			return runGateway(cmd.Context(), &f)
		},
	}
	f.register(cmd.Flags())
	return cmd
}

func runGateway(ctx context.Context, f *gatewayFlags) error {
	logger, err := f.log.logger()
	if err != nil {
		return err
	}
	creds, err := f.tls.credentials(pki.RoleGateway, logger)
	if err != nil {
		return err
	}
	apiKey, err := loadAPIKey(f.apiKeyFile)
	if err != nil {
		return err
	}
	if apiKey == "" {
		logger.Warn("no --api-key-file: anyone who reaches the gateway can upload and delete photos")
	}
	decodeMemory, err := f.limits.decodeBudget(logger, 0)
	if err != nil {
		return err
	}
	var evictURLs []string
	for _, a := range f.cacheInternal {
		evictURLs = append(evictURLs, internalScheme(creds)+"://"+strings.TrimSpace(a))
	}
	g := newGroup()
	cl, err := newClusterClient(g, f.directory, creds, nil, 0, logger)
	if err != nil {
		return err
	}
	gw, err := newGateway(cl, gatewayRoleConfig{
		apiKey:         apiKey,
		cacheNodes:     f.cacheNodes,
		cacheEvictURLs: evictURLs,
		cacheHTTP:      internalHTTPClient(creds, pki.RoleCache),
		maxUpload:      int64(f.maxUpload),
		maxPixels:      int64(f.maxPixels),
		maxDecodes:     f.maxDecodes,
		decodeMemory:   decodeMemory,
		noWebP:         !f.limits.webp,
		recent:         f.recent,
		logger:         logger,
		opts: gateway.Options{
			AllowedOrigins: f.limits.allowedOrigins,
			Public:         reachableFromElsewhere(f.httpAddr),
		},
	})
	if err != nil {
		g.stop()
		return err
	}
	srv, err := gateway.NewServer(gw, gateway.ServerOptions{
		HTTPAddr:        f.httpAddr,
		Logger:          logger,
		ShutdownTimeout: f.shutdownTimeout,
	})
	if err != nil {
		g.stop()
		return err
	}
	g.serve("gateway", srv.Serve)
	return g.run(ctx)
}

// pixelCount is a flag holding a number of pixels: a plain or scientific
// number ("80000000", "80e6") or megapixels ("80MP", "80M").
type pixelCount int64

// String implements pflag.Value.
func (p pixelCount) String() string {
	if p > 0 && p%1_000_000 == 0 {
		return strconv.FormatInt(int64(p)/1_000_000, 10) + "MP"
	}
	return strconv.FormatInt(int64(p), 10)
}

// Set implements pflag.Value.
func (p *pixelCount) Set(s string) error {
	t := strings.TrimSpace(s)
	mult := 1.0
	for _, suffix := range []string{"MP", "M"} {
		if len(t) > len(suffix) && strings.EqualFold(t[len(t)-len(suffix):], suffix) {
			t, mult = strings.TrimSpace(t[:len(t)-len(suffix)]), 1e6
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(n) || math.IsInf(n, 0) || n < 0 || n*mult >= math.MaxInt64 {
		return errors.New("want a pixel count such as 80e6, 80000000 or 80MP")
	}
	*p = pixelCount(n * mult)
	return nil
}

// Type implements pflag.Value.
func (p *pixelCount) Type() string { return "pixels" }

// newBenchUploadCmd is `haybale bench upload`, wired in bench.go.
func newBenchUploadCmd() *cobra.Command {
	var cfg bench.UploadConfig
	var size, keyFile string
	cmd := &cobra.Command{
		Use:   "upload",
		Short: "Upload synthetic photos through a running gateway and measure uploads/s",
		Long: `upload synthesizes a photo-like JPEG of --size pixels and POSTs it --photos
times to the gateway at --url, --conns at a time, then prints uploads/s, MB/s
of uploaded bytes and the latency percentiles. Each upload is resized and
written to every replica, so this measures the whole upload path.`,
		Example: "  haybale bench upload --url http://127.0.0.1:8000 --size 4000x3000 --photos 50 --conns 2",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w, h, ok := strings.Cut(strings.ToLower(size), "x")
			var err1, err2 error
			if ok {
				cfg.Width, err1 = strconv.Atoi(w)
				cfg.Height, err2 = strconv.Atoi(h)
			}
			if !ok || err1 != nil || err2 != nil || cfg.Width <= 0 || cfg.Height <= 0 {
				return fmt.Errorf("--size %q: want WIDTHxHEIGHT, e.g. 4000x3000", size)
			}
			if keyFile != "" {
				b, err := os.ReadFile(keyFile)
				if err != nil {
					return fmt.Errorf("--api-key-file: %w", err)
				}
				cfg.APIKey = strings.TrimSpace(string(b))
			}
			cfg.Out = cmd.OutOrStdout()
			_, err := bench.RunUpload(cmd.Context(), cfg)
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.URL, "url", "http://127.0.0.1:8000", "base URL of the gateway")
	fl.StringVar(&keyFile, "api-key-file", "", "file holding the gateway's API key")
	fl.StringVar(&size, "size", "4000x3000", "pixel size of the synthetic JPEG, WIDTHxHEIGHT")
	fl.IntVar(&cfg.Photos, "photos", 50, "uploads to make")
	fl.IntVar(&cfg.Concurrency, "conns", 2, "uploads in flight at once")
	fl.IntVar(&cfg.Quality, "quality", 90, "JPEG quality of the synthetic photo")
	fl.BoolVar(&cfg.Delete, "delete", false, "delete the uploaded photos afterwards")
	fl.Uint64Var(&cfg.Seed, "seed", 1, "seed of the synthetic photo")
	return cmd
}
