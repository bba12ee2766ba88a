package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/haybale/haybale/internal/dirconn"
	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// DirectoryShardPeersOptions configure DirectoryShardPeers.
type DirectoryShardPeersOptions struct {
	// DirectoryAddr is the directory's gRPC address, or the addresses of
	// its nodes separated by commas. Required.
	DirectoryAddr string
	// Credentials secure the calls to the directory and the peer stores
	// (this store's certificate on a TLS plane); nil means rpc.Insecure().
	Credentials *rpc.Credentials
	// Self returns this store's advertised gRPC address, which is never
	// asked for shards; nil asks every holder.
	Self func() string
	// TTL is how long a volume's shard map is trusted; default 30s. A read
	// that finds no holder refreshes it at once.
	TTL time.Duration
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
}

// DirectoryShardPeers is a volume.ShardReader for stores in a cluster: it
// learns which stores hold an EC volume from the directory (Lookup), which
// shards each holds from the stores themselves (VolumeStatus), and reads
// shard ranges with EcShardRead. Connections are kept per store. It is safe
// for concurrent use.
type DirectoryShardPeers struct {
	opts DirectoryShardPeersOptions
	dir  *dirconn.Conn
	mu   struct {
		sync.Mutex
		conns  map[string]*grpc.ClientConn
		shards map[uint32]shardMap
		closed bool
	}
}

// shardMap is where the shards of one EC volume are, as last learned.
type shardMap struct {
	at      time.Time
	forced  bool                      // learned because a read found no holder
	holders [volume.ECShards][]string // gRPC addresses per shard
}

// NewDirectoryShardPeers returns peers that find holders through the
// directory at opts.DirectoryAddr. Close releases its connections.
func NewDirectoryShardPeers(opts DirectoryShardPeersOptions) (*DirectoryShardPeers, error) {
	if opts.DirectoryAddr == "" {
		return nil, errors.New("store: shard peers need the directory's address")
	}
	if opts.TTL <= 0 {
		opts.TTL = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	opts.Credentials = rpc.OrInsecure(opts.Credentials)
	// Lookup is served by any directory node with fresh state; the
	// connection moves to another node when one fails.
	dir, err := dirconn.New(dirconn.Options{Addrs: []string{opts.DirectoryAddr}, Credentials: opts.Credentials, Logger: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("store: directory %s: %w", opts.DirectoryAddr, err)
	}
	p := &DirectoryShardPeers{opts: opts, dir: dir}
	p.mu.conns = map[string]*grpc.ClientConn{}
	p.mu.shards = map[uint32]shardMap{}
	return p, nil
}

// client returns a store client for addr, dialling it once.
func (p *DirectoryShardPeers) client(addr string) (storepb.StoreClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.closed {
		return nil, volume.ErrClosed
	}
	conn, ok := p.mu.conns[addr]
	if !ok {
		var err error
		conn, err = rpc.Dial(p.opts.Credentials, addr, []pki.Role{pki.RoleStore})
		if err != nil {
			return nil, err
		}
		p.mu.conns[addr] = conn
	}
	return storepb.NewStoreClient(conn), nil
}

// holders returns the stores holding shard of vid, learning the volume's
// shard map when it is unknown, stale, or refresh is set.
func (p *DirectoryShardPeers) holders(ctx context.Context, vid uint32, shard int, refresh bool) ([]string, error) {
	p.mu.Lock()
	m, ok := p.mu.shards[vid]
	p.mu.Unlock()
	// A refresh asked for by a failed read follows another one by at least
	// a second, so a shard lost for good does not turn every degraded read
	// into a round of lookups.
	if ok && (!refresh && time.Since(m.at) < p.opts.TTL || refresh && m.forced && time.Since(m.at) < time.Second) {
		return m.holders[shard], nil
	}
	resp, err := directorypb.NewDirectoryClient(p.dir).Lookup(ctx, &directorypb.LookupRequest{Vid: vid})
	if err != nil {
		return nil, fmt.Errorf("directory lookup of volume %d: %w", vid, err)
	}
	self := ""
	if p.opts.Self != nil {
		self = p.opts.Self()
	}
	m = shardMap{at: time.Now(), forced: refresh}
	for _, r := range resp.GetReplicas() {
		addr := r.GetGrpcAddr()
		if addr == "" || addr == self {
			continue
		}
		c, err := p.client(addr)
		if err != nil {
			continue
		}
		st, err := c.VolumeStatus(ctx, &storepb.VolumeStatusRequest{Vid: vid})
		if err != nil || len(st.GetVolumes()) != 1 {
			continue
		}
		for _, i := range st.GetVolumes()[0].GetEcShardIds() {
			if i < volume.ECShards {
				m.holders[i] = append(m.holders[i], addr)
			}
		}
	}
	p.mu.Lock()
	p.mu.shards[vid] = m
	p.mu.Unlock()
	return m.holders[shard], nil
}

// ReadShard implements volume.ShardReader.
func (p *DirectoryShardPeers) ReadShard(ctx context.Context, vid uint32, shard int, b []byte, off int64) error {
	if shard < 0 || shard >= volume.ECShards {
		return fmt.Errorf("%w: shard %d", volume.ErrShardUnavailable, shard)
	}
	var errs []error
	for attempt := 0; attempt < 2; attempt++ {
		addrs, err := p.holders(ctx, vid, shard, attempt > 0)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var clients []StoreShardClient
		for _, a := range addrs {
			if c, err := p.client(a); err == nil {
				clients = append(clients, c)
			}
		}
		if len(clients) == 0 {
			continue
		}
		err = ShardPeers{Holders: func(uint32, int) []StoreShardClient { return clients }}.ReadShard(ctx, vid, shard, b, off)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("%w: shard %d of volume %d: no peer holds it or answers: %w", volume.ErrShardUnavailable, shard, vid, errors.Join(errs...))
}

// Close closes the connections.
func (p *DirectoryShardPeers) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.closed {
		return nil
	}
	p.mu.closed = true
	errs := []error{p.dir.Close()}
	for _, c := range p.mu.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
