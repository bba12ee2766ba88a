package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/haybale/haybale/directory"
	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store"
	"github.com/haybale/haybale/store/volume"
)

// directoryFlags are the flags of `haybale directory`.
type directoryFlags struct {
	dir               string
	grpcAddr          string
	httpAddr          string
	replication       int
	volumeSizeLimit   byteSize
	cdnURL            string
	cacheNodes        []string
	secretFile        string
	heartbeatInterval time.Duration
	compactThreshold  float64
	ecAfter           time.Duration
	ecFullPercent     float64
	raftID            string
	raftAddr          string
	bootstrap         string
	seedFrom          string
	advertiseGRPC     string
	advertiseHTTP     string
	tls               tlsFlags
	log               logFlags
}

func (f *directoryFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.dir, "dir", "", "data directory holding the directory's state (created if missing; required)")
	fs.StringVar(&f.grpcAddr, "grpc", directory.DefaultGRPCAddr, "address of the gRPC server (assign, lookup, heartbeats)")
	fs.StringVar(&f.httpAddr, "http", directory.DefaultHTTPAddr, "address of the HTTP server (status page, /api/v1/status, /metrics, /healthz)")
	fs.IntVar(&f.replication, "replication", directory.DefaultReplication, "replicas of each new volume, on distinct stores (1 on one machine)")
	f.volumeSizeLimit = byteSize(directory.DefaultVolumeSizeLimit)
	fs.Var(&f.volumeSizeLimit, "volume-size-limit", "size at which a volume turns read-only, e.g. 32GiB or 500MB (at most 32GiB)")
	fs.StringVar(&f.cdnURL, "cdn-url", "", "base URL of the CDN; image URLs point at it when set")
	fs.StringSliceVar(&f.cacheNodes, "cache-nodes", nil, "cache nodes (host:port or base URLs, comma-separated, listed as the caches list them); without a CDN, image URLs point at the node owning the photo")
	fs.StringVar(&f.secretFile, "secret-file", "", "file holding the cluster secret that signs write tokens (default <dir>/secret, generated when absent)")
	fs.DurationVar(&f.heartbeatInterval, "heartbeat-interval", directory.DefaultHeartbeatInterval, "interval of store heartbeats; a store silent for 3 intervals is dead")
	fs.Float64Var(&f.compactThreshold, "compact-threshold", 0, "fraction of a read-only volume's bytes that may be garbage before its stores are asked to compact it, e.g. 0.3 (0 = never)")
	fs.DurationVar(&f.ecAfter, "ec-after", 0, "erasure-code (RS 10+4) a volume once none of its replicas was appended to for this long and it is --ec-full-percent full, e.g. 168h; the leader seals, encodes and places one volume at a time (0 = never: operators run `haybale ec encode --directory`)")
	fs.Float64Var(&f.ecFullPercent, "ec-full-percent", directory.DefaultECFullPercent, "fill level, in percent of --volume-size-limit, a volume needs before --ec-after encodes it")
	fs.StringVar(&f.raftID, "raft-id", "", "this node's id in a directory cluster, e.g. d1 (none: a single directory on <dir>/"+directory.StateFile+")")
	fs.StringVar(&f.raftAddr, "raft-addr", "", "host:port of this node's raft transport, reachable by the other directory nodes (with --raft-id); mutual TLS with the directory certificates of --certs-dir, which must name this host")
	fs.StringVar(&f.bootstrap, "bootstrap", "", "start a new cluster with these voters, id@host:port comma-separated, this node included; give every founding node the same list (ignored once the node has raft state)")
	fs.StringVar(&f.seedFrom, "seed-from", "", "state file of a single-node directory (its <dir>/"+directory.StateFile+", directory stopped) to start a new cluster from; needs --bootstrap listing this node alone; add the other nodes with `haybale directory add`")
	fs.StringVar(&f.advertiseGRPC, "advertise-grpc", "", "gRPC address other machines reach this node at, named by followers when they point clients at the leader (default: the bound --grpc address)")
	fs.StringVar(&f.advertiseHTTP, "advertise-http", "", "HTTP address other machines reach this node at (default: the bound --http address)")
	f.tls.register(fs)
	f.log.register(fs)
}

// raftOptions returns the cluster options of the flags, nil for a single
// node.
func (f *directoryFlags) raftOptions() (*directory.RaftOptions, error) {
	if f.raftID == "" {
		if f.raftAddr != "" || f.bootstrap != "" || f.seedFrom != "" {
			return nil, fmt.Errorf("--raft-addr, --bootstrap and --seed-from need --raft-id")
		}
		return nil, nil
	}
	if f.raftAddr == "" {
		return nil, fmt.Errorf("--raft-id %s: --raft-addr is required", f.raftID)
	}
	if _, _, err := net.SplitHostPort(f.raftAddr); err != nil {
		return nil, fmt.Errorf("--raft-addr %q: %w", f.raftAddr, err)
	}
	peers, err := directory.ParsePeers(f.bootstrap)
	if err != nil {
		return nil, fmt.Errorf("--bootstrap: %w", err)
	}
	if len(peers) > 0 {
		self := false
		for _, p := range peers {
			self = self || (p.ID == f.raftID && p.Addr == f.raftAddr)
		}
		if !self {
			return nil, fmt.Errorf("--bootstrap must list this node as %s@%s", f.raftID, f.raftAddr)
		}
	}
	ro := &directory.RaftOptions{ID: f.raftID, Addr: f.raftAddr, Bootstrap: peers}
	if f.seedFrom != "" {
		// The seeding node must lead the new cluster's first term, so the
		// cluster starts as this node alone.
		if len(peers) != 1 {
			return nil, fmt.Errorf("--seed-from needs --bootstrap %s@%s (this node alone; add the others afterwards)", f.raftID, f.raftAddr)
		}
		if ro.Seed, err = directory.LoadSeed(f.seedFrom); err != nil {
			return nil, fmt.Errorf("--seed-from: %w", err)
		}
	}
	return ro, nil
}

func (f *directoryFlags) validate() error {
	switch {
	case f.dir == "":
		return fmt.Errorf("--dir is required")
	case f.replication < 1:
		return fmt.Errorf("--replication %d: must be at least 1", f.replication)
	case f.volumeSizeLimit <= 0 || int64(f.volumeSizeLimit) > volume.MaxSize:
		return fmt.Errorf("--volume-size-limit %v: must be more than 0 and at most %v", f.volumeSizeLimit, byteSize(volume.MaxSize))
	case f.heartbeatInterval <= 0:
		return fmt.Errorf("--heartbeat-interval %v: must be positive", f.heartbeatInterval)
	case f.compactThreshold < 0 || f.compactThreshold >= 1:
		return fmt.Errorf("--compact-threshold %v: must be 0 (off) or a fraction below 1", f.compactThreshold)
	case f.ecAfter < 0:
		return fmt.Errorf("--ec-after %v: must be 0 (off) or positive", f.ecAfter)
	case f.ecFullPercent <= 0 || f.ecFullPercent > 100:
		return fmt.Errorf("--ec-full-percent %v: must be above 0 and at most 100", f.ecFullPercent)
	case f.cdnURL != "" && !strings.Contains(f.cdnURL, "://"):
		return fmt.Errorf("--cdn-url %q: want an absolute URL such as https://cdn.example.com", f.cdnURL)
	}
	return nil
}

func newDirectoryCmd() *cobra.Command {
	var f directoryFlags
	cmd := &cobra.Command{
		Use:   "directory",
		Short: "Run the directory: stores, volumes, key assignment, write tokens and image URLs",
		Long: `directory keeps track of the stores and the logical volumes, hands out
photo keys with write tokens, allocates new volumes on distinct stores, and
builds image URLs. Stores join it with ` + "`haybale store --directory HOST:PORT`" + `.

Its state is kept in <dir>/` + directory.StateFile + `. With --raft-id it is one node of a
cluster of 1, 3 or 5 directories: the state is replicated by a raft log in
<dir>/raft, only the leader decides, and the others point clients at it.
Found a cluster by starting every node with the same --bootstrap list.
The cluster secret that signs write
tokens is read from --secret-file, or generated in <dir>/secret; give the
same file to the stores (--secret-file) so that they verify the tokens.

With --ec-after the leader erasure-codes quiet volumes by itself: a volume
whose replicas took no append for that long and that is --ec-full-percent
full is made read-only, compacted (sealed), encoded into 14 Reed-Solomon
shards on distinct stores and racks, verified, recorded as EC, and its plain
replicas replaced; one volume at a time, retried with a growing backoff when
a step fails. The status page and /metrics show the jobs.`,
		Example: "  haybale directory --dir /srv/haybale-dir --grpc :7070 --http :7071 --replication 3 --cache-nodes cache1:8090,cache2:8090\n" +
			"  haybale directory --dir /srv/haybale-dir --replication 3 --ec-after 168h --ec-full-percent 95\n" +
			"  haybale directory --dir /srv/dir1 --raft-id d1 --raft-addr host1:7072 --advertise-grpc host1:7070 --bootstrap d1@host1:7072,d2@host2:7072,d3@host3:7072",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.validate(); err != nil {
				return err
			}
			return runDirectory(cmd.Context(), &f)
		},
	}
	f.register(cmd.Flags())
	cmd.AddCommand(newDirectoryMembersCmd(), newDirectoryAddCmd(), newDirectoryRemoveCmd())
	return cmd
}

func runDirectory(ctx context.Context, f *directoryFlags) error {
	logger, err := f.log.logger()
	if err != nil {
		return err
	}
	creds, err := f.tls.credentials(pki.RoleDirectory, logger)
	if err != nil {
		return err
	}
	secretFile := f.secretFile
	if secretFile == "" {
		secretFile = filepath.Join(f.dir, directory.SecretFile)
	}
	secret, err := token.LoadOrCreateSecret(secretFile)
	if err != nil {
		return err
	}
	ro, err := f.raftOptions()
	if err != nil {
		return err
	}
	g := newGroup()
	if _, err := startDirectory(g, directory.Options{
		Raft:              ro,
		AdvertiseGRPC:     f.advertiseGRPC,
		AdvertiseHTTP:     f.advertiseHTTP,
		Dir:               f.dir,
		GRPCAddr:          f.grpcAddr,
		HTTPAddr:          f.httpAddr,
		Replication:       f.replication,
		VolumeSizeLimit:   uint64(f.volumeSizeLimit),
		HeartbeatInterval: f.heartbeatInterval,
		CompactThreshold:  f.compactThreshold,
		ECAfter:           f.ecAfter,
		ECFullPercent:     f.ecFullPercent,
		CDNURL:            f.cdnURL,
		CacheNodes:        f.cacheNodes,
		Secret:            secret,
		Credentials:       creds,
		Logger:            logger,
	}); err != nil {
		return err
	}
	return g.run(ctx)
}

// storeClusterFlags are the flags with which `haybale store` joins a
// directory and checks write tokens.
type storeClusterFlags struct {
	directory  string
	rack       string
	publicURL  string
	secretFile string
}

func (f *storeClusterFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.directory, "directory", "", "gRPC address HOST:PORT of the directory to join, or of every node of a directory cluster, comma-separated (none: run standalone; heartbeats follow the leader)")
	fs.StringVar(&f.rack, "rack", "", "rack label; replicas of a volume go to distinct racks")
	fs.StringVar(&f.publicURL, "public-url", "", "base URL under which clients outside the cluster reach this store's HTTP server (default: its HTTP address)")
	fs.StringVar(&f.secretFile, "secret-file", "", "file holding the cluster secret (the directory's), to check the write and delete tokens; required with --directory. Without it the store takes no writes or deletes")
}

// authorizer returns the token checker of --secret-file. A store joining
// a directory needs it; a standalone store without it serves reads only.
func (f *storeClusterFlags) authorizer(logger *slog.Logger) (store.WriteAuthorizer, error) {
	if f.secretFile == "" {
		if f.directory != "" {
			return nil, fmt.Errorf("--secret-file is required with --directory: without the cluster secret the store could not check write tokens")
		}
		logger.Warn("no --secret-file: this store takes no writes or deletes, it only serves what its volumes hold")
		return nil, nil
	}
	return storeAuthorizer(f.secretFile)
}

// corruptHook forwards corrupt reads to the heartbeater once it exists.
type corruptHook struct {
	hb atomic.Pointer[store.Heartbeater]
}

func (c *corruptHook) report(vid uint32, key uint64, size needle.SizeCode, err error) {
	if hb := c.hb.Load(); hb != nil {
		hb.ReportCorrupt(vid, key, size, err)
	}
}

// advertiseAddr turns a bound listener address into one other machines can
// dial: a wildcard host becomes this machine's host name.
func advertiseAddr(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if name, err := os.Hostname(); err == nil && name != "" {
			host = name
		}
	}
	return net.JoinHostPort(host, port)
}
