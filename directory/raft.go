package directory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/haybale/haybale/internal/rpc"
)

// Peer is one member of a directory cluster: its raft server id and raft
// address.
type Peer struct {
	ID   string
	Addr string
}

// ParsePeers parses "id@host:port,id@host:port".
func ParsePeers(s string) ([]Peer, error) {
	var out []Peer
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		id, addr, ok := strings.Cut(f, "@")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("directory: peer %q: want id@host:port", f)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("directory: peer %q: %w", f, err)
		}
		out = append(out, Peer{ID: id, Addr: addr})
	}
	return out, nil
}

// RaftOptions configure a node of a directory cluster.
type RaftOptions struct {
	// ID is this node's raft server id, stable across restarts. Required.
	ID string
	// Addr is the raft address other nodes dial, host:port; it is also
	// bound unless Transport is set.
	Addr string
	// Dir holds raft.db (the log and stable store, bbolt) and snapshots/;
	// default <Options.Dir>/raft.
	Dir string
	// Bootstrap, when set on a node with no raft state yet, starts a new
	// cluster with these voters (this node included). Every founding node
	// may be given the same list. Nodes added later start without it and
	// are added with Raft.AddVoter on the leader.
	Bootstrap []Peer
	// Transport, when set, replaces the network transport (tests use
	// raft's in-memory transport).
	Transport raft.Transport
	// Credentials secure the raft transport. With TLS credentials, raft
	// runs over mutual TLS from the cluster CA: this node accepts only
	// peers whose certificate names the directory role, and dials only
	// peers that present one valid for the address dialed. Insecure
	// credentials (or nil) keep plain TCP, open to anyone who can reach
	// Addr. Set by NewServer from Options.Credentials.
	Credentials *rpc.Credentials
	// InMemory keeps the log, the stable store and the snapshots in memory
	// (tests only).
	InMemory bool
	// HeartbeatTimeout and ElectionTimeout bound how fast a dead leader is
	// replaced; defaults 500 ms and 500 ms. LeaderLeaseTimeout defaults to
	// 250 ms.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// SnapshotThreshold is the number of log entries after which a
	// snapshot is taken; default 8192. SnapshotInterval is how often that
	// is checked; default 2 minutes.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	// TrailingLogs is the number of entries kept after a snapshot, so that
	// a follower slightly behind catches up from the log; default 10240.
	TrailingLogs uint64
	// Seed, when set, is the state of a single-node directory (LoadSeed)
	// that this node commits as the cluster's first state when it first
	// leads a cluster whose state is still empty, before it decides
	// anything. Use it with a Bootstrap of this node alone, then add the
	// other nodes; a node whose state is not empty ignores it.
	Seed *SeedState
	// Node is this node's client addresses, recorded in the state when it
	// leads so that followers can name it. Set by NewServer.
	Node NodeRecord
	// Logger receives raft's logs (at warn and above) and the node's own.
	Logger *slog.Logger
}

// Raft is a Log that commits commands through hashicorp/raft: the log and
// stable store are a bbolt file (raft-boltdb), snapshots of the FSM are
// files (raft's file snapshot store), and the FSM is applied in memory on
// every node, rebuilt at start from the last snapshot and the log after it.
// It is safe for concurrent use.
type Raft struct {
	r         *raft.Raft
	fsm       *FSM
	opts      RaftOptions
	store     io.Closer // the bbolt log store, nil in memory
	transport raft.Transport
	notify    chan bool
	done      chan struct{}
	// staleAfter is how long a follower serves reads without hearing
	// from the leader.
	staleAfter time.Duration
	wg         sync.WaitGroup

	mu struct {
		sync.Mutex
		epochs uint64    // leaderships so far
		epoch  uint64    // current ready leadership, 0 when none
		since  time.Time // start of the current leadership
	}
	closeOnce sync.Once
	closeErr  error
}

// raftFSM adapts FSM to raft.FSM.
type raftFSM struct{ f *FSM }

// Apply implements raft.FSM: it decodes and applies one command; the
// response is the FSM's error (nil on success).
func (a raftFSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	cmd, err := DecodeCommand(l.Data)
	if err != nil {
		return err
	}
	return a.f.Apply(cmd)
}

// Snapshot implements raft.FSM: the state, serialized at once (it is
// small), written by Persist.
func (a raftFSM) Snapshot() (raft.FSMSnapshot, error) {
	var buf bytes.Buffer
	if err := a.f.WriteSnapshot(&buf); err != nil {
		return nil, err
	}
	return fsmSnapshot(buf.Bytes()), nil
}

// Restore implements raft.FSM.
func (a raftFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	return a.f.Restore(rc)
}

type fsmSnapshot []byte

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s fsmSnapshot) Release() {}

// OpenRaft starts this node's raft over fsm (which must be empty: raft
// fills it from the snapshot and the log). It bootstraps a new cluster
// when opts.Bootstrap is set and there is no raft state yet.
func OpenRaft(opts RaftOptions, fsm *FSM) (_ *Raft, err error) {
	if opts.ID == "" {
		return nil, errors.New("directory: raft needs a node id")
	}
	if opts.Addr == "" && opts.Transport == nil {
		return nil, errors.New("directory: raft needs an address")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	cfg := raft.DefaultConfig()
	cfg.LocalID = raft.ServerID(opts.ID)
	cfg.HeartbeatTimeout = cmpDur(opts.HeartbeatTimeout, 500*time.Millisecond)
	cfg.ElectionTimeout = cmpDur(opts.ElectionTimeout, 500*time.Millisecond)
	cfg.LeaderLeaseTimeout = cmpDur(opts.LeaderLeaseTimeout, 250*time.Millisecond)
	cfg.CommitTimeout = 5 * time.Millisecond
	cfg.SnapshotThreshold = opts.SnapshotThreshold
	if cfg.SnapshotThreshold == 0 {
		cfg.SnapshotThreshold = 8192
	}
	cfg.SnapshotInterval = cmpDur(opts.SnapshotInterval, 2*time.Minute)
	if opts.TrailingLogs > 0 {
		cfg.TrailingLogs = opts.TrailingLogs
	}
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{opts.Logger}})
	notify := make(chan bool, 16)
	cfg.NotifyCh = notify

	n := &Raft{fsm: fsm, opts: opts, notify: notify, done: make(chan struct{}), staleAfter: 2 * cfg.HeartbeatTimeout}
	var closers []func() error
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()
	var logs raft.LogStore
	var stable raft.StableStore
	var snaps raft.SnapshotStore
	if opts.InMemory {
		mem := raft.NewInmemStore()
		logs, stable, snaps = mem, mem, raft.NewInmemSnapshotStore()
	} else {
		if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("directory: raft dir: %w", err)
		}
		bs, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(opts.Dir, "raft.db")})
		if err != nil {
			return nil, fmt.Errorf("directory: raft log store: %w", err)
		}
		closers = append(closers, bs.Close)
		n.store = bs
		logs, stable = bs, bs
		if snaps, err = raft.NewFileSnapshotStoreWithLogger(opts.Dir, 2, cfg.Logger); err != nil {
			return nil, fmt.Errorf("directory: raft snapshot store: %w", err)
		}
	}
	n.transport = opts.Transport
	if n.transport == nil {
		if n.transport, err = openTransport(opts, cfg.Logger); err != nil {
			return nil, err
		}
		closers = append(closers, n.transport.(io.Closer).Close)
	}
	if len(opts.Bootstrap) > 0 {
		has, err := raft.HasExistingState(logs, stable, snaps)
		if err != nil {
			return nil, fmt.Errorf("directory: raft state: %w", err)
		}
		if !has {
			var servers []raft.Server
			for _, p := range opts.Bootstrap {
				servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Addr)})
			}
			if err := raft.BootstrapCluster(cfg, logs, stable, snaps, n.transport, raft.Configuration{Servers: servers}); err != nil {
				return nil, fmt.Errorf("directory: bootstrap raft: %w", err)
			}
		}
	}
	if n.r, err = raft.NewRaft(cfg, raftFSM{fsm}, logs, stable, snaps, n.transport); err != nil {
		return nil, fmt.Errorf("directory: start raft: %w", err)
	}
	n.wg.Go(n.watchLeadership)
	return n, nil
}

// openTransport returns raft's network transport on opts.Addr: over
// mutual TLS with TLS credentials, plain TCP on an insecure plane.
func openTransport(opts RaftOptions, logger hclog.Logger) (*raft.NetworkTransport, error) {
	creds := rpc.OrInsecure(opts.Credentials)
	if creds.IsInsecure() {
		tcp, err := raft.NewTCPTransportWithLogger(opts.Addr, nil, 3, 5*time.Second, logger)
		if err != nil {
			return nil, fmt.Errorf("directory: raft transport on %s: %w", opts.Addr, err)
		}
		return tcp, nil
	}
	stream, err := newTLSStreamLayer(opts.Addr, creds.Node(), opts.Logger)
	if err != nil {
		return nil, fmt.Errorf("directory: raft transport on %s: %w", opts.Addr, err)
	}
	return raft.NewNetworkTransportWithLogger(stream, 3, 5*time.Second, logger), nil
}

func cmpDur(a, b time.Duration) time.Duration {
	if a > 0 {
		return a
	}
	return b
}

// watchLeadership follows raft's leadership notifications. A node that
// becomes leader first commits a barrier, so that its FSM holds every
// entry committed by earlier leaders (every key block among them), and
// only then opens a new epoch in which it decides; then it records its
// client addresses so that followers can name it.
func (n *Raft) watchLeadership() {
	for {
		select {
		case <-n.done:
			return
		case leader := <-n.notify:
			n.mu.Lock()
			n.mu.epoch = 0
			n.mu.Unlock()
			if !leader {
				n.opts.Logger.Info("directory lost the raft leadership", "node", n.opts.ID)
				continue
			}
			for n.r.State() == raft.Leader && len(n.notify) == 0 {
				if err := n.r.Barrier(5 * time.Second).Error(); err != nil {
					n.opts.Logger.Warn("raft barrier after election failed", "err", err)
					continue
				}
				if n.opts.Seed != nil && n.fsm.Empty() {
					if err := n.seed(); err != nil {
						n.opts.Logger.Warn("cannot commit the seed state; retrying", "err", err)
						continue
					}
				}
				n.mu.Lock()
				n.mu.epochs++
				n.mu.epoch, n.mu.since = n.mu.epochs, time.Now()
				n.mu.Unlock()
				n.opts.Logger.Info("directory leads the raft cluster", "node", n.opts.ID, "term", n.r.CurrentTerm())
				if cur, ok := n.fsm.Node(n.opts.ID); !ok || cur != n.opts.Node {
					node := n.opts.Node
					if err := n.Apply(context.Background(), Command{Type: CmdSetNode, Node: &node}); err != nil {
						n.opts.Logger.Warn("cannot record this node's addresses", "err", err)
					}
				}
				break
			}
		}
	}
}

// seed commits the seed state. It returns an error only when the entry
// could not be committed; an FSM that refuses it (the state is not empty)
// is logged.
func (n *Raft) seed() error {
	b, err := EncodeCommand(Command{Type: CmdSeed, Seed: n.opts.Seed})
	if err != nil {
		return err
	}
	f := n.r.Apply(b, 30*time.Second)
	if err := f.Error(); err != nil {
		return err
	}
	if ferr, _ := f.Response().(error); ferr != nil {
		n.opts.Logger.Error("seed state refused", "err", ferr)
		return nil
	}
	n.opts.Logger.Info("directory cluster seeded from a single-node state", "key_high_water", n.opts.Seed.HighWater,
		"vid_mark", n.opts.Seed.VidMark, "stores", len(n.opts.Seed.Stores), "volumes", len(n.opts.Seed.Volumes))
	return nil
}

// Apply implements Log: it commits cmd through raft and returns the FSM's
// error for it.
func (n *Raft) Apply(ctx context.Context, cmd Command) error {
	if n.r.State() != raft.Leader {
		return n.NotLeader()
	}
	b, err := EncodeCommand(cmd)
	if err != nil {
		return err
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	f := n.r.Apply(b, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return n.NotLeader()
		}
		if errors.Is(err, raft.ErrRaftShutdown) {
			return ErrClosed
		}
		return fmt.Errorf("%w: raft: %v", ErrUnavailable, err)
	}
	if resp, ok := f.Response().(error); ok && resp != nil {
		return resp
	}
	return nil
}

// Leadership implements Log.
func (n *Raft) Leadership() (uint64, time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.epoch == 0 {
		return 0, time.Time{}
	}
	return n.mu.epoch, n.mu.since
}

// Fresh returns nil when this node's state may answer reads, and the
// not-leader error to answer with otherwise: a leader must have applied
// every entry earlier leaders committed (its leadership is ready); a
// follower must have heard from the leader within two heartbeat timeouts
// and applied every entry it knows committed. A node that just restarted
// thus sends readers to the leader until it has caught up, rather than
// answer "unknown volume" from an old snapshot.
func (n *Raft) Fresh() error {
	switch n.r.State() {
	case raft.Leader:
		if epoch, _ := n.Leadership(); epoch != 0 {
			return nil
		}
	case raft.Follower:
		last := n.r.LastContact()
		if !last.IsZero() && time.Since(last) <= n.staleAfter && n.r.AppliedIndex() >= n.r.CommitIndex() {
			return nil
		}
	}
	return n.NotLeader()
}

// NotLeader implements Log: the leader named by its client address, as
// the leader recorded it.
func (n *Raft) NotLeader() error {
	_, id := n.r.LeaderWithID()
	if id == "" {
		return &NotLeaderError{}
	}
	if rec, ok := n.fsm.Node(string(id)); ok {
		return &NotLeaderError{Leader: rec.GRPCAddr}
	}
	return &NotLeaderError{}
}

// Member is one server of the raft configuration.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	Voter    bool   `json:"voter"`
	Leader   bool   `json:"leader"`
	// GRPCAddr and HTTPAddr are the node's client addresses, once it led.
	GRPCAddr string `json:"grpc_addr,omitempty"`
	HTTPAddr string `json:"http_addr,omitempty"`
}

// RaftStatus is a node's view of the cluster, for the status page.
type RaftStatus struct {
	ID          string   `json:"id"`
	State       string   `json:"state"`
	Term        uint64   `json:"term"`
	LastIndex   uint64   `json:"last_index"`
	Applied     uint64   `json:"applied_index"`
	LastContact string   `json:"last_contact,omitempty"`
	Members     []Member `json:"members"`
}

// Members lists the raft configuration.
func (n *Raft) Members() ([]Member, error) {
	f := n.r.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("%w: raft configuration: %v", ErrUnavailable, err)
	}
	_, leader := n.r.LeaderWithID()
	var out []Member
	for _, s := range f.Configuration().Servers {
		m := Member{ID: string(s.ID), RaftAddr: string(s.Address), Voter: s.Suffrage == raft.Voter, Leader: s.ID == leader}
		if rec, ok := n.fsm.Node(string(s.ID)); ok {
			m.GRPCAddr, m.HTTPAddr = rec.GRPCAddr, rec.HTTPAddr
		}
		out = append(out, m)
	}
	return out, nil
}

// Status returns this node's raft state and the members.
func (n *Raft) Status() RaftStatus {
	st := RaftStatus{ID: n.opts.ID, State: n.r.State().String(), Term: n.r.CurrentTerm(), LastIndex: n.r.LastIndex(), Applied: n.r.AppliedIndex()}
	if n.r.State() != raft.Leader {
		if t := n.r.LastContact(); !t.IsZero() {
			st.LastContact = time.Since(t).Round(time.Millisecond).String() + " ago"
		}
	}
	st.Members, _ = n.Members()
	return st
}

// AddVoter adds a node to the cluster (leader only); adding a member
// already present with the same address does nothing.
func (n *Raft) AddVoter(id, addr string) error {
	if id == "" || addr == "" {
		return fmt.Errorf("%w: a member needs an id and a raft address", ErrInvalidArgument)
	}
	if n.r.State() != raft.Leader {
		return n.NotLeader()
	}
	return n.membershipErr(n.r.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 30*time.Second).Error())
}

// RemoveServer removes a node from the cluster (leader only).
func (n *Raft) RemoveServer(id string) error {
	if id == "" {
		return fmt.Errorf("%w: no member id", ErrInvalidArgument)
	}
	if n.r.State() != raft.Leader {
		return n.NotLeader()
	}
	members, err := n.Members()
	if err != nil {
		return err
	}
	found := false
	for _, m := range members {
		found = found || m.ID == id
	}
	if !found {
		return fmt.Errorf("%w: no member %q", ErrInvalidArgument, id)
	}
	return n.membershipErr(n.r.RemoveServer(raft.ServerID(id), 0, 30*time.Second).Error())
}

func (n *Raft) membershipErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost):
		return n.NotLeader()
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrClosed
	}
	return fmt.Errorf("%w: raft: %v", ErrUnavailable, err)
}

// Snapshot takes a snapshot now (tests and operators).
func (n *Raft) Snapshot() error { return n.r.Snapshot().Error() }

// Raw returns the hashicorp/raft node, for tests and tools.
func (n *Raft) Raw() *raft.Raft { return n.r }

// Close stops raft and closes its stores.
func (n *Raft) Close() error {
	n.closeOnce.Do(func() {
		err := n.r.Shutdown().Error()
		close(n.done)
		n.wg.Wait()
		if c, ok := n.transport.(io.Closer); ok && n.opts.Transport == nil {
			err = errors.Join(err, c.Close())
		}
		if n.store != nil {
			err = errors.Join(err, n.store.Close())
		}
		n.closeErr = err
	})
	return n.closeErr
}

// slogWriter turns hclog's lines into warnings of logger.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Warn(strings.TrimSpace(string(p)), "component", "raft")
	return len(p), nil
}
