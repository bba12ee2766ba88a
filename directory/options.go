package directory

import (
	"log/slog"
	"strings"
	"time"

	"github.com/haybale/haybale/internal/rpc"
)

// Defaults of Options.
const (
	DefaultGRPCAddr          = ":7070"
	DefaultHTTPAddr          = ":7071"
	DefaultReplication       = 3
	DefaultVolumeSizeLimit   = 32 << 30
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultTokenTTL          = 10 * time.Minute
	DefaultKeyBlock          = 10000
	DefaultMaxAssignCount    = 10000
	DefaultMinWritable       = 4
	DefaultMinStoreFreeBytes = 1 << 30
	DefaultPersistInterval   = time.Minute
	DefaultECFullPercent     = 95
	DefaultECRetry           = 10 * time.Minute
	// MissedHeartbeats is the number of heartbeat intervals after which a
	// silent store is dead.
	MissedHeartbeats = 3
	// StateFile is the name of the state file in Options.Dir.
	StateFile = "directory.db"
	// SecretFile is the name of the generated secret in Options.Dir.
	SecretFile = "secret"
)

// Options configure a Server. Zero values take the documented defaults.
type Options struct {
	// Dir holds the state file (StateFile) and, when Secret is empty, the
	// cluster secret (SecretFile, generated when absent). Required.
	Dir string
	// GRPCAddr is the gRPC listen address; default DefaultGRPCAddr.
	// "127.0.0.1:0" picks a free port (see Server.GRPCAddr).
	GRPCAddr string
	// HTTPAddr is the HTTP listen address (status page, JSON, metrics);
	// default DefaultHTTPAddr.
	HTTPAddr string
	// Replication is the number of replicas of each new volume, on
	// distinct stores; default DefaultReplication (3).
	Replication int
	// VolumeSizeLimit is the size at which a volume turns read-only;
	// default DefaultVolumeSizeLimit (32 GiB, the most a volume can hold).
	VolumeSizeLimit uint64
	// HeartbeatInterval is the interval asked of the stores; a store silent
	// for MissedHeartbeats intervals is dead. Default 5s.
	HeartbeatInterval time.Duration
	// CDNURL, when set, is the base of every image URL, e.g.
	// "https://cdn.example.com".
	CDNURL string
	// CacheNodes are the cache tier's nodes ("host:port" or base URLs).
	// Without a CDN, image URLs point at the node that owns the photo's key
	// (needle.Owner over this list, as the caches configure it).
	CacheNodes []string
	// Secret signs write tokens. Default: the secret in Dir/SecretFile,
	// generated when absent.
	Secret []byte
	// TokenTTL is the validity of a write token; default 10 minutes.
	TokenTTL time.Duration
	// KeyBlock is the number of keys reserved per durable high-water
	// update; default 10000. A restart skips at most this many keys.
	KeyBlock uint64
	// MaxAssignCount is the largest count one Assign may ask for; default
	// 10000.
	MaxAssignCount uint32
	// MinWritable is the number of writable volumes with room left below
	// which new volumes are allocated; default 4.
	MinWritable int
	// MinStoreFreeBytes is the free disk space a store needs to receive a
	// new volume; default 1 GiB.
	MinStoreFreeBytes uint64
	// PersistInterval bounds how stale the persisted heartbeat figures
	// (free space, sizes, counts) may get; changes of addresses, volume
	// sets and states are persisted at once. Default 1 minute.
	PersistInterval time.Duration
	// CompactThreshold, when above 0, is the fraction of a read-only
	// volume's bytes that may be garbage (deleted or superseded needles)
	// before the directory asks its replicas to compact it; 0 turns
	// automatic compaction off. Sealed volumes are already compacted.
	CompactThreshold float64
	// CompactRetry is how long the directory waits before asking a replica
	// to compact the same volume again; default 1 hour.
	CompactRetry time.Duration
	// ECAfter, when above 0, turns the automatic erasure-coding policy on
	// (see ecpolicy.go): the leader erasure-codes a volume once no replica
	// was appended to for ECAfter and its largest replica reached
	// ECFullPercent of the size limit. 0 (the default) turns it off.
	ECAfter time.Duration
	// ECFullPercent is the fill level, in percent of the size limit, a
	// volume needs for the policy; default DefaultECFullPercent (95).
	ECFullPercent float64
	// ECRetry is the wait before the policy tries a volume again after a
	// failed job, doubled per further failure up to a day; default 10
	// minutes.
	ECRetry time.Duration
	// ECCheckInterval is how often the policy looks for volumes to
	// encode; default the heartbeat interval.
	ECCheckInterval time.Duration
	// Clock is the erasure-coding policy's clock (quiet periods, backoff,
	// job times); default time.Now. Tests move it instead of sleeping.
	Clock func() time.Time
	// KeepOriginals adds the original ("o") to PhotoURLs.
	KeepOriginals bool
	// AdvertiseGRPC and AdvertiseHTTP are the addresses other machines
	// reach this node's servers at, which a follower names when it points
	// clients at the leader; default the bound addresses.
	AdvertiseGRPC string
	AdvertiseHTTP string
	// Raft, when set, runs this node as a member of a directory cluster
	// (see RaftOptions); nil runs a single-node directory on the state
	// file.
	Raft *RaftOptions
	// Credentials secure the gRPC server (mutual TLS, each method allowed
	// to the roles of Policy) and the connections to the stores. nil means
	// rpc.Insecure(): no TLS and no role checks, for tests; cmd/haybale
	// always sets it.
	Credentials *rpc.Credentials
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.GRPCAddr == "" {
		o.GRPCAddr = DefaultGRPCAddr
	}
	if o.HTTPAddr == "" {
		o.HTTPAddr = DefaultHTTPAddr
	}
	if o.Replication <= 0 {
		o.Replication = DefaultReplication
	}
	if o.VolumeSizeLimit == 0 {
		o.VolumeSizeLimit = DefaultVolumeSizeLimit
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if o.TokenTTL <= 0 {
		o.TokenTTL = DefaultTokenTTL
	}
	if o.KeyBlock == 0 {
		o.KeyBlock = DefaultKeyBlock
	}
	if o.MaxAssignCount == 0 {
		o.MaxAssignCount = DefaultMaxAssignCount
	}
	if o.MinWritable <= 0 {
		o.MinWritable = DefaultMinWritable
	}
	if o.MinStoreFreeBytes == 0 {
		o.MinStoreFreeBytes = DefaultMinStoreFreeBytes
	}
	if o.PersistInterval <= 0 {
		o.PersistInterval = DefaultPersistInterval
	}
	if o.CompactRetry <= 0 {
		o.CompactRetry = time.Hour
	}
	if o.ECFullPercent <= 0 {
		o.ECFullPercent = DefaultECFullPercent
	}
	if o.ECRetry <= 0 {
		o.ECRetry = DefaultECRetry
	}
	if o.ECCheckInterval <= 0 {
		o.ECCheckInterval = o.HeartbeatInterval
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	o.Credentials = rpc.OrInsecure(o.Credentials)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.CDNURL = strings.TrimRight(o.CDNURL, "/")
	return o
}
