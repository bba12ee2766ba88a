// Package testcluster starts a real haybale cluster inside a test process:
// a directory (one node, or a raft cluster of several on in-memory raft
// transports) and a number of stores with heartbeaters, all on
// 127.0.0.1:0, with their data in the test's temporary folders. Tests of the client,
// gateway and cache build on it; no production package may import it (the
// layering test enforces that).
package testcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/haybale/haybale/directory"
	"github.com/haybale/haybale/internal/dirconn"
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
	// Directories is how many directory nodes to start; default 1, a
	// single-node directory. More start a raft cluster whose nodes talk
	// over in-memory transports; DirAddr then lists every node.
	Directories int
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
	// ECAfter, ECFullPercent, ECCheckInterval and Clock are passed to the
	// directory's erasure-coding policy (ECAfter 0 = off).
	ECAfter         time.Duration
	ECFullPercent   float64
	ECCheckInterval time.Duration
	Clock           func() time.Time
	// CacheNodes and CDNURL are passed to the directory's URL policy.
	CacheNodes []string
	CDNURL     string
	// Logger; default discards.
	Logger *slog.Logger
}

// Cluster is a running directory and its stores.
type Cluster struct {
	t    testing.TB
	opts Options
	// Dir is the first directory node; Dirs every node.
	Dir  *directory.Server
	Dirs []*DirNode
	// DirAddr is the directory's gRPC address, or the comma-separated
	// addresses of every node of a directory cluster (what the client and
	// the heartbeaters take).
	DirAddr string
	Stores  []*Store
	conn    *dirconn.Conn
	// Directory is a client of the directory's gRPC API; with a cluster
	// it follows the leader.
	Directory directorypb.DirectoryClient
}

// DirNode is one node of the directory.
type DirNode struct {
	ID   string
	Srv  *directory.Server
	Addr string
	mu   sync.Mutex
	stop func()
}

// Stop shuts the node down (as a crash would, for the others: its raft
// transport stops answering). It is idempotent.
func (n *DirNode) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stop != nil {
		n.stop()
		n.stop = nil
	}
}

// Stopped reports whether Stop was called.
func (n *DirNode) Stopped() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stop == nil
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
	c.startDirectories()
	var err error
	c.conn, err = dirconn.New(dirconn.Options{Addrs: []string{c.DirAddr}, Logger: opts.Logger})
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

// startDirectories starts opts.Directories directory nodes.
func (c *Cluster) startDirectories() {
	t, opts := c.t, c.opts
	n := max(opts.Directories, 1)
	var peers []directory.Peer
	trans := make([]*raft.InmemTransport, n)
	if n > 1 {
		for i := range n {
			addr, tr := raft.NewInmemTransport("")
			trans[i] = tr
			peers = append(peers, directory.Peer{ID: fmt.Sprintf("d%d", i+1), Addr: string(addr)})
		}
		for i := range trans {
			for j := range trans {
				if i != j {
					trans[i].Connect(trans[j].LocalAddr(), trans[j])
				}
			}
		}
	}
	var addrs []string
	for i := range n {
		o := directory.Options{
			Dir: t.TempDir(), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
			Replication: opts.Replication, VolumeSizeLimit: uint64(opts.VolumeSizeLimit),
			HeartbeatInterval: opts.Heartbeat, Secret: opts.Secret, MinWritable: 1, MinStoreFreeBytes: 1,
			CacheNodes: opts.CacheNodes, CDNURL: opts.CDNURL, Logger: opts.Logger,
			CompactThreshold: opts.CompactThreshold,
			ECAfter:          opts.ECAfter, ECFullPercent: opts.ECFullPercent, ECCheckInterval: opts.ECCheckInterval, Clock: opts.Clock,
		}
		node := &DirNode{ID: fmt.Sprintf("d%d", i+1)}
		if n > 1 {
			o.Raft = &directory.RaftOptions{ID: node.ID, Transport: trans[i], InMemory: true, Bootstrap: peers,
				HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond}
		}
		srv, err := directory.NewServer(o)
		if err != nil {
			t.Fatal(err)
		}
		node.Srv, node.Addr = srv, srv.GRPCAddr().String()
		done := make(chan error, 1)
		go func() { done <- srv.Serve(context.Background()) }()
		tr := trans[i]
		node.stop = func() {
			if tr != nil {
				// Cut the node off first, so the others see it vanish at
				// once rather than step down in order.
				tr.DisconnectAll()
			}
			if err := srv.Shutdown(context.Background()); err != nil {
				t.Errorf("directory %s shutdown: %v", node.ID, err)
			}
			if err := <-done; err != nil {
				t.Errorf("directory %s: %v", node.ID, err)
			}
		}
		c.Dirs = append(c.Dirs, node)
		addrs = append(addrs, node.Addr)
	}
	c.Dir = c.Dirs[0].Srv
	c.DirAddr = strings.Join(addrs, ",")
}

// Leader waits until a running directory node leads and returns it.
func (c *Cluster) Leader() *DirNode {
	c.t.Helper()
	var found *DirNode
	c.Eventually("a directory leader", func() error {
		for _, n := range c.Dirs {
			if n.Stopped() {
				continue
			}
			if r := n.Srv.Raft(); r == nil {
				found = n
				return nil
			} else if epoch, _ := r.Leadership(); epoch != 0 {
				found = n
				return nil
			}
		}
		return errors.New("no node leads")
	})
	return found
}

func (c *Cluster) stop() {
	for _, s := range c.Stores {
		s.Stop()
	}
	c.conn.Close()
	for _, n := range c.Dirs {
		n.Stop()
	}
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

// WaitAlive waits until n stores are registered and alive, as the
// leading directory node sees them (a follower judges no liveness).
func (c *Cluster) WaitAlive(n int) {
	c.t.Helper()
	c.Eventually(fmt.Sprintf("%d stores alive", n), func() error {
		leader := c.Leader()
		alive := 0
		for _, s := range leader.Srv.Directory().Stores() {
			if s.State == directory.StoreAlive {
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
