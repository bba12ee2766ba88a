package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/store/volume"
)

// storeFlags are the flags of `haybale store`.
type storeFlags struct {
	dir             string
	httpAddr        string
	grpcAddr        string
	volumeSizeLimit byteSize
	maxConns        int
	eventLoop       bool
	shutdownTimeout time.Duration
	verifiedMaps    int
	directReads     bool
	directWindow    int
	cluster         storeClusterFlags
	tls             tlsFlags
	log             logFlags
}

func (f *storeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.dir, "dir", "", "data directory holding the volumes (created if missing; required)")
	fs.StringVar(&f.httpAddr, "http", ":8080", "address of the HTTP read server (images, /healthz, /readyz, /metrics)")
	fs.StringVar(&f.grpcAddr, "grpc", ":8081", "address of the gRPC write and admin server")
	f.volumeSizeLimit = byteSize(volume.MaxSize)
	fs.Var(&f.volumeSizeLimit, "volume-size-limit", "size at which a volume turns read-only, e.g. 32GiB or 500MB (at most 32GiB)")
	fs.IntVar(&f.maxConns, "max-conns", 0, "maximum HTTP connections served at once (0: no limit)")
	fs.BoolVar(&f.eventLoop, "event-loop", true, "serve HTTP on event loops, one per core, answering image GETs without a goroutine per connection (Linux only; --event-loop=false: fasthttp)")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long SIGTERM waits for requests in flight before closing connections")
	fs.IntVar(&f.verifiedMaps, "verified-mappings", volume.DefaultVerifiedMappings, "images of 4 KiB or more kept mapped once verified, so that they are sent from the page cache without a copy (proven still verified before each send) and rereads skip the checksum while their pages stay in memory (an image under 32 KiB only while there is room, never evicting another); answers being sent may hold an eighth more out of the cache, beyond which an image is read into memory; each takes two mappings of the process (with that eighth, at most half of vm.max_map_count); 0: off, no zero-copy at all: every image is read into memory with one pread and hashed; the default, where vm.max_map_count cannot give it, is off with a log line, any other bound an error")
	fs.BoolVar(&f.directReads, "direct-reads", true, "read images of 32 KiB or more that are not in the page cache with O_DIRECT, leaving the page cache to images read more than once (file systems that refuse O_DIRECT read through the page cache, with a warning in the log)")
	fs.IntVar(&f.directWindow, "direct-window", volume.DefaultDirectWindow, "with --direct-reads, an image read from the disk again within this many such reads is read through the page cache and stays in memory (4 bytes each, for the whole store)")
	f.cluster.register(fs)
	f.tls.register(fs)
	f.log.register(fs)
}

func (f *storeFlags) validate() error {
	switch {
	case f.dir == "":
		return fmt.Errorf("--dir is required")
	case f.volumeSizeLimit <= 0 || int64(f.volumeSizeLimit) > volume.MaxSize:
		return fmt.Errorf("--volume-size-limit %v: must be more than 0 and at most %v", f.volumeSizeLimit, byteSize(volume.MaxSize))
	case f.maxConns < 0:
		return fmt.Errorf("--max-conns %d: must not be negative", f.maxConns)
	case f.verifiedMaps < 0:
		return fmt.Errorf("--verified-mappings %d: must not be negative (0 turns them off)", f.verifiedMaps)
	case f.directWindow <= 0 || f.directWindow > maxDirectWindow:
		return fmt.Errorf("--direct-window %d: must be more than 0 and at most %d", f.directWindow, maxDirectWindow)
	}
	return nil
}

func newStoreCmd() *cobra.Command {
	var f storeFlags
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Serve a data directory's volumes: images over HTTP, writes and admin over gRPC",
		Long: `store serves the volumes of one data directory.

Images are read over HTTP at /p/<photo ID>/<size>[.<ext>] (the CDN-origin
surface); writes, deletes and volume administration go over gRPC. SIGTERM or
Ctrl-C drains requests in flight, then syncs and closes the volumes.`,
		Example: "  haybale store --dir /srv/haybale --http :8080 --grpc :8081 --volume-size-limit 32GiB",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.validate(); err != nil {
				return err
			}
			return runStore(cmd.Context(), &f)
		},
	}
	f.register(cmd.Flags())
	cmd.AddCommand(newStoreRemoveCmd())
	return cmd
}

func runStore(ctx context.Context, f *storeFlags) error {
	logger, err := f.log.logger()
	if err != nil {
		return err
	}
	creds, err := f.tls.credentials(pki.RoleStore, logger)
	if err != nil {
		return err
	}
	authorizer, err := f.cluster.authorizer(logger)
	if err != nil {
		return err
	}
	g := newGroup()
	if _, err := startStore(ctx, g, storeRoleConfig{
		dir:             f.dir,
		httpAddr:        f.httpAddr,
		grpcAddr:        f.grpcAddr,
		volumeSizeLimit: int64(f.volumeSizeLimit),
		maxConns:        f.maxConns,
		eventLoop:       f.eventLoop,
		shutdownTimeout: f.shutdownTimeout,
		verifiedMaps:    verifiedMappingsOption(f.verifiedMaps),
		directReads:     f.directReads,
		directWindow:    f.directWindow,
		authorizer:      authorizer,
		creds:           creds,
		logger:          logger,
		directory:       f.cluster.directory,
		advertise:       advertiseAddr,
		publicURL:       f.cluster.publicURL,
		rack:            f.cluster.rack,
		ecPeers:         true,
	}); err != nil {
		g.stop()
		return err
	}
	return g.run(ctx)
}

// maxDirectWindow bounds --direct-window: 16 MiB of table.
const maxDirectWindow = 1 << 22

// verifiedMappingsOption turns --verified-mappings (0: off) into
// store.Options.VerifiedMappings (0: the default, negative: off). The
// default bound is passed as the store's default, so that a kernel whose
// vm.max_map_count cannot give it leaves the store running without
// verified mappings (it logs why) rather than refusing to start; any
// other bound is asked for, and one the kernel cannot give is an error.
func verifiedMappingsOption(n int) int {
	switch n {
	case 0:
		return -1
	case volume.DefaultVerifiedMappings:
		return 0
	}
	return n
}

// logFlags choose the structured logger.
type logFlags struct {
	level  string
	format string
}

func (f *logFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.format, "log-format", "text", "log format: text or json")
}

func (f *logFlags) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch f.format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", f.format)
}

// byteSize is a flag holding a number of bytes, written with an optional
// unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers
// of 1024); "32GiB", "1.5GB", "4096".
type byteSize int64

var byteUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

// parseByteSize parses a human-readable size.
func parseByteSize(s string) (byteSize, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	for _, u := range byteUnits {
		if len(t) > len(u.suffix) && strings.EqualFold(t[len(t)-len(u.suffix):], u.suffix) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(n) || math.IsInf(n, 0) || n < 0 {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional unit such as 512MiB, 32GiB or 1.5GB", s)
	}
	v := n * mult
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return byteSize(v), nil
}

// String implements pflag.Value.
func (b byteSize) String() string {
	v := int64(b)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v >= u.mult && v%u.mult == 0 {
			return strconv.FormatInt(v/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(v, 10) + "B"
}

// Set implements pflag.Value.
func (b *byteSize) Set(s string) error {
	v, err := parseByteSize(s)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// Type implements pflag.Value.
func (b *byteSize) Type() string { return "size" }
