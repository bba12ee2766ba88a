package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/haybale/haybale/cache"
	"github.com/haybale/haybale/internal/pki"
)

// cacheFlags are the flags of `haybale cache`.
type cacheFlags struct {
	directory       string
	httpAddr        string
	internalAddr    string
	capacity        byteSize
	memfdMin        byteSize
	nodes           []string
	self            string
	cdnHeader       string
	admitCDN        bool
	admitReadOnly   bool
	eventLoop       bool
	upstreamTimeout time.Duration
	maxAge          time.Duration
	replicaTimeout  time.Duration
	lookupTTL       time.Duration
	shutdownTimeout time.Duration
	tls             tlsFlags
	log             logFlags
}

func (f *cacheFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.directory, "directory", "", "gRPC address HOST:PORT of the directory, or of every node of a directory cluster, comma-separated (required; the leader is found and followed)")
	fs.StringVar(&f.httpAddr, "http", ":8100", "address of the public HTTP server (images, /healthz, /readyz)")
	fs.StringVar(&f.internalAddr, "internal", ":8101", "address of the internal HTTP server, with mutual TLS: DELETE /p/<photo ID> for gateways, /metrics for operators")
	f.capacity = byteSize(cache.DefaultCapacity)
	fs.Var(&f.capacity, "capacity", "memory for cached images, e.g. 4GiB or 512MB")
	f.memfdMin = byteSize(cache.DefaultMemfdMin)
	fs.Var(&f.memfdMin, "memfd-min", "smallest image kept in the cache's memfd and sent with sendfile on a hit (0: every image in Go memory, written by copy)")
	fs.StringSliceVar(&f.nodes, "nodes", nil, "every cache node (base URLs or host:port, comma-separated, written exactly as the directory's --cache-nodes); each node caches only the photos it owns")
	fs.StringVar(&f.self, "self", "", "this node's entry in --nodes (required with --nodes)")
	fs.StringVar(&f.cdnHeader, "cdn-header", cache.DefaultCDNHeader, "request header that marks traffic coming through a CDN")
	fs.BoolVar(&f.admitCDN, "admit-cdn", false, "also cache images requested through a CDN (default: the CDN caches them)")
	fs.BoolVar(&f.admitReadOnly, "admit-read-only", false, "also cache images of read-only volumes (default: only writable volumes, the recent uploads)")
	fs.BoolVar(&f.eventLoop, "event-loop", true, "serve the public listener on event loops, one per core, answering hits without a goroutine per connection (Linux only; --event-loop=false: fasthttp)")
	fs.DurationVar(&f.maxAge, "max-age", cache.DefaultMaxAge, "longest an image stays cached after it was fetched (bounds how long a deleted photo can be served if an eviction is lost)")
	fs.DurationVar(&f.upstreamTimeout, "upstream-timeout", cache.DefaultUpstreamTimeout, "time limit of one miss's fetch from the stores, replica failover included")
	fs.DurationVar(&f.replicaTimeout, "replica-timeout", 3*time.Second, "time limit of one replica attempt; after it the next replica is tried (keep it well under --upstream-timeout)")
	fs.DurationVar(&f.lookupTTL, "lookup-ttl", 30*time.Second, "how long a volume's replicas and state from the directory are reused")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long SIGTERM waits for requests in flight before closing connections")
	f.tls.register(fs)
	f.log.register(fs)
}

func (f *cacheFlags) validate() error {
	switch {
	case f.directory == "":
		return fmt.Errorf("--directory is required")
	case f.internalAddr == "":
		return fmt.Errorf("--internal is required: gateways evict deleted photos through it")
	case f.capacity <= 0:
		return fmt.Errorf("--capacity %v: must be more than 0", f.capacity)
	case len(f.nodes) > 0 && f.self == "":
		return fmt.Errorf("--self is required with --nodes")
	case len(f.nodes) == 0 && f.self != "":
		return fmt.Errorf("--self needs --nodes")
	case f.cdnHeader == "":
		return fmt.Errorf("--cdn-header must not be empty")
	case f.upstreamTimeout <= 0 || f.replicaTimeout <= 0 || f.lookupTTL <= 0:
		return fmt.Errorf("--upstream-timeout, --replica-timeout and --lookup-ttl must be positive")
	}
	return nil
}

func newCacheCmd() *cobra.Command {
	var f cacheFlags
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Serve images from memory in front of the stores (the cache tier)",
		Long: `cache serves the image path /p/<photo ID>/<size>[.<ext>] exactly as a store
does, keeping recently read images in memory and fetching misses from a
replica (failing over to the next on error, timeout or corrupt answers).

As in Haystack, an image is cached only when the request did not come
through a CDN (--cdn-header) and its volume is writable; --admit-cdn and
--admit-read-only switch the rules off. With --nodes, several caches share
the photo keys by rendezvous hashing: each caches only the photos it owns
and answers for the others without caching.

The internal listener (--internal) serves, with mutual TLS from the cluster
CA, DELETE /p/<photo ID> to gateways (they evict a photo after deleting it)
and /metrics to operators; neither is on the public port.`,
		Example: "  haybale cache --certs-dir /etc/haybale/cache-cache1 --directory dir1:7070 --http :8100 --internal :8101 --capacity 4GiB \\\n" +
			"    --nodes http://cache1:8100,http://cache2:8100 --self http://cache1:8100",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.validate(); err != nil {
				return err
			}
			return runCache(cmd.Context(), &f)
		},
	}
	f.register(cmd.Flags())
	return cmd
}

func runCache(ctx context.Context, f *cacheFlags) error {
	logger, err := f.log.logger()
	if err != nil {
		return err
	}
	creds, err := f.tls.credentials(pki.RoleCache, logger)
	if err != nil {
		return err
	}
	g := newGroup()
	cl, err := newClusterClient(g, f.directory, creds, &http.Client{Timeout: f.replicaTimeout}, f.lookupTTL, logger)
	if err != nil {
		return err
	}
	c, err := newCache(cl, cache.Options{
		Capacity:        int64(f.capacity),
		MemfdMin:        memfdMin(f.memfdMin),
		CDNHeader:       f.cdnHeader,
		AdmitFromCDN:    f.admitCDN,
		AdmitReadOnly:   f.admitReadOnly,
		Nodes:           f.nodes,
		Self:            f.self,
		UpstreamTimeout: f.upstreamTimeout,
		MaxAge:          f.maxAge,
		Logger:          logger,
	})
	if err != nil {
		g.stop()
		return err
	}
	sopts := cache.ServerOptions{
		Addr:            f.httpAddr,
		InternalAddr:    f.internalAddr,
		Logger:          logger,
		ShutdownTimeout: f.shutdownTimeout,
		EventLoop:       f.eventLoop,
	}
	if n := creds.Node(); n != nil {
		sopts.InternalTLS = n.ServerTLS()
	}
	srv, err := cache.NewServer(c, sopts)
	if err != nil {
		c.Close()
		g.stop()
		return err
	}
	g.serve("cache", srv.Serve)
	return g.run(ctx)
}

// memfdMin maps --memfd-min to cache.Options.MemfdMin, where 0 means the
// default and a negative value none.
func memfdMin(b byteSize) int {
	if b == 0 {
		return -1
	}
	return int(min(b, 1<<40))
}
