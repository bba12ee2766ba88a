// Package testcluster starts a real haybale cluster inside a test process:
// a directory and a number of stores with heartbeaters, all on 127.0.0.1:0,
// with their data in the test's temporary folders. Tests of the client,
// gateway and cache build on it; no production package may import it (the
// layering test enforces that).
package testcluster

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/haybale/haybale/directory"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/store"
)

// defaultSecret is the cluster secret when Options.Secret is nil.
var defaultSecret = []byte("testcluster secret, long enough for a signer")

// Options configure a cluster. The zero value starts one store with
// replication 1 and no secret.
type Options struct {
	// Stores is how many stores to start; default 1.
	Stores int
	// Replication is the directory's replication factor; default Stores.
	Replication int
	// Secret is the cluster secret the directory signs tokens with and
	// the stores verify them with; default a fixed test secret. Stores
	// always require tokens.
	Secret []byte
	// VolumeSizeLimit for the directory and the stores; default 64 MiB.
	VolumeSizeLimit int64
	// Heartbeat is the heartbeat interval; default 100 ms.
	Heartbeat time.Duration
	// CompactThreshold is passed to the directory (0 = no automatic
	// compaction).
	CompactThreshold float64
	// CacheNodes and CDNURL are passed to the directory's URL policy.
	CacheNodes []string
	CDNURL     string
	// Logger; default discards.
	Logger *slog.Logger
}

// Cluster is a running directory and its stores.
type Cluster struct {
	t       testing.TB
	opts    Options
	Dir     *directory.Server
	DirAddr string
	Stores  []*Store
	conn    *grpc.ClientConn
	// Directory is a client of the directory's gRPC API.
	Directory directorypb.DirectoryClient
	stopDir   func()
}

// Store is one running store of a cluster.
type Store struct {
	c       *Cluster
	DataDir string
	Rack    string
	Srv     *store.Server
	HB      *store.Heartbeater
	mu      sync.Mutex
	stopFn  func()
	stopped bool
}

// Start starts a cluster and waits until every store is registered and
// alive. It stops everything when the test ends.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Stores <= 0 {
		opts.Stores = 1
	}
	if opts.Replication <= 0 {
		opts.Replication = opts.Stores
	}
	if opts.VolumeSizeLimit <= 0 {
		opts.VolumeSizeLimit = 64 << 20
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 100 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Secret == nil {
		opts.Secret = defaultSecret
	}
	c := &Cluster{t: t, opts: opts}
	dir, err := directory.NewServer(directory.Options{
		Dir: t.TempDir(), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Replication: opts.Replication, VolumeSizeLimit: uint64(opts.VolumeSizeLimit),
		HeartbeatInterval: opts.Heartbeat, Secret: opts.Secret, MinWritable: 1, MinStoreFreeBytes: 1,
		CacheNodes: opts.CacheNodes, CDNURL: opts.CDNURL, Logger: opts.Logger,
		CompactThreshold: opts.CompactThreshold,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Dir = dir
	c.DirAddr = dir.GRPCAddr().String()
	done := make(chan error, 1)
	go func() { done <- dir.Serve(context.Background()) }()
	c.stopDir = func() {
		if err := dir.Shutdown(context.Background()); err != nil {
			t.Errorf("directory shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("directory: %v", err)
		}
	}
	c.conn, err = rpc.Dial(rpc.Insecure(), c.DirAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Directory = directorypb.NewDirectoryClient(c.conn)
	t.Cleanup(c.stop)
	base := t.TempDir()
	for i := 0; i < opts.Stores; i++ {
		s := &Store{c: c, DataDir: filepath.Join(base, fmt.Sprint("store", i)), Rack: fmt.Sprint("rack", i)}
		s.start()
		c.Stores = append(c.Stores, s)
	}
	c.WaitAlive(opts.Stores)
	return c
}

func (c *Cluster) stop() {
	for _, s := range c.Stores {
		s.Stop()
	}
	c.conn.Close()
	c.stopDir()
}

// Eventually polls cond until it returns nil, failing the test after 20 s.
func (c *Cluster) Eventually(what string, cond func() error) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitAlive waits until n stores are registered and alive.
func (c *Cluster) WaitAlive(n int) {
	c.t.Helper()
	c.Eventually(fmt.Sprintf("%d stores alive", n), func() error {
		resp, err := c.Directory.ListStores(context.Background(), &directorypb.ListStoresRequest{})
		if err != nil {
			return err
		}
		alive := 0
		for _, s := range resp.GetStores() {
			if s.GetState() == directorypb.StoreState_STORE_STATE_ALIVE {
				alive++
			}
		}
		if alive != n {
			return fmt.Errorf("%d of %d alive", alive, n)
		}
		return nil
	})
}

func (s *Store) start() {
	t, opts := s.c.t, s.c.opts
	// EC volumes read the shards a store lacks from the holders the
	// directory names.
	var self atomic.Pointer[string]
	peers, err := store.NewDirectoryShardPeers(store.DirectoryShardPeersOptions{
		DirectoryAddr: s.c.DirAddr, Logger: opts.Logger,
		Self: func() string {
			if a := self.Load(); a != nil {
				return *a
			}
			return ""
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), store.Options{Dir: s.DataDir, VolumeSizeLimit: opts.VolumeSizeLimit, Logger: opts.Logger, ShardPeers: peers})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := token.NewSigner(opts.Secret)
	if err != nil {
		t.Fatal(err)
	}
	var hb *store.Heartbeater
	srv, err := store.NewServer(st, store.ServerOptions{
		HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", Logger: opts.Logger, Authorizer: signer,
		OnCorrupt: func(vid uint32, key uint64, size needle.SizeCode, err error) {
			if hb != nil {
				hb.ReportCorrupt(vid, key, size, err)
			}
		},
	})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	selfAddr := srv.GRPCAddr().String()
	self.Store(&selfAddr)
	hb, err = store.NewHeartbeater(st, store.HeartbeaterOptions{
		DirectoryAddr: s.c.DirAddr, GRPCAddr: srv.GRPCAddr().String(), HTTPAddr: srv.HTTPAddr().String(),
		Rack: s.Rack, Interval: opts.Heartbeat, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: opts.Logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	serveDone, hbDone := make(chan error, 1), make(chan error, 1)
	go func() { serveDone <- srv.Serve(ctx) }()
	go func() { hbDone <- hb.Run(ctx) }()
	s.mu.Lock()
	s.Srv, s.HB, s.stopped = srv, hb, false
	s.stopFn = func() {
		cancel()
		if err := <-hbDone; err != nil {
			t.Errorf("heartbeater: %v", err)
		}
		if err := <-serveDone; err != nil {
			t.Errorf("store: %v", err)
		}
		peers.Close()
	}
	s.mu.Unlock()
}

// HTTPAddr returns the store's HTTP address.
func (s *Store) HTTPAddr() string { return s.Srv.HTTPAddr().String() }

// Stop shuts the store down cleanly (its data stays).
func (s *Store) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true
	s.stopFn()
}

// Restart starts a stopped store again over the same data, on new ports.
func (s *Store) Restart() {
	s.Stop()
	s.start()
}
