package directory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// memStores is a StoreAPI over stores held in memory, shared by the nodes
// of a test cluster.
type memStores struct {
	mu   sync.Mutex
	vols map[string]map[uint32]VolumeReport
	// clock is the stores' report clock (one for all of them, which keeps
	// each store's stamps increasing).
	clock int64
}

func newMemStores(ids ...string) *memStores {
	m := &memStores{vols: map[string]map[uint32]VolumeReport{}}
	for _, id := range ids {
		m.vols[id] = map[uint32]VolumeReport{}
	}
	return m
}

func (m *memStores) AllocateVolume(_ context.Context, st StoreRecord, vid uint32, limit uint64, _ []byte) (Allocated, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.vols[st.ID][vid]; ok {
		return Allocated{}, fmt.Errorf("volume %d exists on %s", vid, st.ID)
	}
	r := VolumeReport{Vid: vid, State: StateWritable, SizeBytes: 8, SizeLimit: limit}
	m.vols[st.ID][vid] = r
	m.clock++
	return Allocated{VolumeReport: r, Acknowledged: m.clock}, nil
}

func (m *memStores) MarkReadOnly(_ context.Context, st StoreRecord, vid uint32, reason string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.vols[st.ID][vid]; ok {
		r.State, r.Reason = StateReadOnly, reason
		m.vols[st.ID][vid] = r
	}
	return nil
}

func (m *memStores) heartbeat(id string) Heartbeat {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.clock++
	hb := Heartbeat{StoreID: id, GRPCAddr: id + ":7080", HTTPAddr: id + ":7081", FreeBytes: 1 << 40, Built: m.clock}
	for _, r := range m.vols[id] {
		hb.Volumes = append(hb.Volumes, r)
	}
	return hb
}

// testNode is one directory node of an in-memory raft cluster.
type testNode struct {
	id    string
	trans *raft.InmemTransport
	fsm   *FSM
	raft  *Raft
	d     *Directory
	dir   string
}

type testCluster struct {
	t      testing.TB
	stores *memStores
	nodes  []*testNode
}

func raftOptions(id string, trans raft.Transport, dir string) RaftOptions {
	return RaftOptions{ID: id, Transport: trans, Dir: dir, InMemory: dir == "", Logger: quietLogger(),
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond,
		Node: NodeRecord{ID: id, GRPCAddr: id + ":7070", HTTPAddr: id + ":7071"}}
}

// startNode starts node id on trans (in memory, or with its raft files in
// dir), bootstrapping with peers when given.
func (c *testCluster) startNode(id string, trans *raft.InmemTransport, dir string, peers []Peer, tweak func(*RaftOptions)) *testNode {
	c.t.Helper()
	n := &testNode{id: id, trans: trans, fsm: OpenMemoryFSM(), dir: dir}
	ro := raftOptions(id, trans, dir)
	ro.Bootstrap = peers
	if tweak != nil {
		tweak(&ro)
	}
	var err error
	if n.raft, err = OpenRaft(ro, n.fsm); err != nil {
		c.t.Fatal(err)
	}
	n.d, err = NewDirectory(Options{Secret: testSecret, Replication: 3, MinWritable: 1, MinStoreFreeBytes: 1, KeyBlock: 50,
		HeartbeatInterval: time.Second, Logger: quietLogger()}, n.fsm, n.raft, c.stores)
	if err != nil {
		c.t.Fatal(err)
	}
	c.nodes = append(c.nodes, n)
	return n
}

func (n *testNode) stop() {
	n.d.Close()
	n.raft.Close()
}

// newTestCluster starts size nodes on connected in-memory transports.
func newTestCluster(t testing.TB, size int, tweak func(*RaftOptions)) *testCluster {
	c := &testCluster{t: t, stores: newMemStores("s1", "s2", "s3")}
	var peers []Peer
	trans := make([]*raft.InmemTransport, size)
	for i := range size {
		addr, tr := raft.NewInmemTransport("")
		trans[i] = tr
		peers = append(peers, Peer{ID: fmt.Sprintf("d%d", i+1), Addr: string(addr)})
	}
	for i := range trans {
		for j := range trans {
			if i != j {
				trans[i].Connect(trans[j].LocalAddr(), trans[j])
			}
		}
	}
	for i, p := range peers {
		c.startNode(p.ID, trans[i], "", peers, tweak)
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.stop()
		}
	})
	return c
}

// leader waits for a node whose directory leads (epoch set) among nodes.
func (c *testCluster) leader(nodes ...*testNode) *testNode {
	c.t.Helper()
	if nodes == nil {
		nodes = c.nodes
	}
	var found *testNode
	waitFor(c.t, "a leader", func() error {
		for _, n := range nodes {
			if e, _ := n.raft.Leadership(); e != 0 {
				found = n
				return nil
			}
		}
		return errors.New("no leader")
	})
	return found
}

// beat sends one heartbeat of every store to whichever node leads.
func (c *testCluster) beat() {
	for _, n := range c.nodes {
		for _, id := range []string{"s1", "s2", "s3"} {
			n.d.Heartbeat(context.Background(), c.stores.heartbeat(id))
		}
	}
}

// keyLog records every key range handed out and fails on a key seen twice.
type keyLog struct {
	mu   sync.Mutex
	seen map[uint64]string
	n    int
}

func (k *keyLog) add(t testing.TB, who string, a Assignment) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.seen == nil {
		k.seen = map[uint64]string{}
	}
	for key := a.KeyStart; key < a.KeyStart+uint64(a.KeyCount); key++ {
		if prev, dup := k.seen[key]; dup {
			t.Errorf("key %d handed out twice: by %s and by %s", key, prev, who)
		}
		k.seen[key] = who
	}
	k.n++
}

// assignLoop calls Assign on every node until stop, recording what
// succeeds.
func (c *testCluster) assignLoop(keys *keyLog, stop <-chan struct{}, wg *sync.WaitGroup) {
	for _, n := range c.nodes {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				a, err := n.d.Assign(ctx, 3)
				cancel()
				if err == nil {
					keys.add(c.t, n.id, a)
				} else {
					time.Sleep(2 * time.Millisecond)
				}
			}
		})
	}
}

func TestRaftFollowerNamesLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	l := c.leader()
	c.beat()
	waitFor(t, "leader recorded its addresses", func() error {
		for _, n := range c.nodes {
			if n == l {
				continue
			}
			_, err := n.d.Assign(context.Background(), 1)
			var nl *NotLeaderError
			if !errors.As(err, &nl) || nl.Leader != l.id+":7070" {
				return fmt.Errorf("follower %s: %v", n.id, err)
			}
		}
		return nil
	})
	var page bytes.Buffer
	if err := statusTemplate.Execute(&page, c.nodes[0].d.Status()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page.String(), "Directory cluster") || !strings.Contains(page.String(), "<td>"+l.id+"</td>") {
		t.Fatalf("status page without the raft state:\n%s", page.String())
	}
	// Reads are served by followers from their state.
	if _, err := l.d.Assign(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	vid := l.fsm.Volumes()[0].Vid
	waitFor(t, "followers serve lookups", func() error {
		for _, n := range c.nodes {
			if _, reps, err := n.d.Lookup(vid); err != nil || len(reps) != 3 {
				return fmt.Errorf("%s: %v %v", n.id, reps, err)
			}
		}
		return nil
	})
}

// Keys stay unique while leadership moves from node to node.
func TestRaftKeysUniqueAcrossLeaderChanges(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.leader()
	var keys keyLog
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				c.beat()
			}
		}
	})
	c.assignLoop(&keys, stop, &wg)
	leaders := map[string]bool{}
	for range 6 {
		l := c.leader()
		leaders[l.id] = true
		before := keys.count()
		waitFor(t, "assignments under leader "+l.id, func() error {
			if keys.count() < before+20 {
				return fmt.Errorf("%d assignments", keys.count()-before)
			}
			return nil
		})
		if err := l.raft.Raw().LeadershipTransfer().Error(); err != nil {
			t.Logf("leadership transfer: %v", err)
		}
		waitFor(t, "leadership moved", func() error {
			if e, _ := l.raft.Leadership(); e != 0 {
				return errors.New("still leading")
			}
			return nil
		})
	}
	close(stop)
	wg.Wait()
	if len(leaders) < 2 {
		t.Fatalf("only %v led", leaders)
	}
	t.Logf("%d assignments under leaders %v", keys.count(), leaders)
}

func (k *keyLog) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n
}

// A leader cut off from the others, then healed: the keys handed out on
// both sides of the partition never collide, and the cluster converges.
func TestRaftPartitionNoSplitBrain(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	old := c.leader()
	var keys keyLog
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var healed atomic.Bool
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				c.beat()
			}
		}
	})
	c.assignLoop(&keys, stop, &wg)
	waitFor(t, "assignments before the partition", func() error {
		if keys.count() < 20 {
			return errors.New("too few")
		}
		return nil
	})
	// Cut the leader off, both ways.
	old.trans.DisconnectAll()
	var rest []*testNode
	for _, n := range c.nodes {
		if n != old {
			n.trans.Disconnect(old.trans.LocalAddr())
			rest = append(rest, n)
		}
	}
	waitFor(t, "the cut-off leader steps down", func() error {
		if e, _ := old.raft.Leadership(); e != 0 {
			return errors.New("still leading")
		}
		return nil
	})
	nl := c.leader(rest...)
	before := keys.count()
	waitFor(t, "assignments under the new leader", func() error {
		if keys.count() < before+20 {
			return errors.New("too few")
		}
		return nil
	})
	if _, err := old.d.Assign(context.Background(), 1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("cut-off node answered Assign with %v, want not-leader", err)
	}
	// Heal.
	for _, n := range rest {
		old.trans.Connect(n.trans.LocalAddr(), n.trans)
		n.trans.Connect(old.trans.LocalAddr(), old.trans)
	}
	healed.Store(true)
	before = keys.count()
	waitFor(t, "assignments after healing", func() error {
		if keys.count() < before+20 {
			return errors.New("too few")
		}
		return nil
	})
	close(stop)
	wg.Wait()
	waitFor(t, "the healed node catches up", func() error {
		l := c.leader()
		if old.fsm.HighWater() != l.fsm.HighWater() {
			return fmt.Errorf("high water %d vs %d", old.fsm.HighWater(), l.fsm.HighWater())
		}
		return nil
	})
	t.Logf("%d assignments; leader %s, then %s", keys.count(), old.id, nl.id)
}

// A node restarted from its files rebuilds its state from the last
// snapshot and the log after it.
func TestRaftRestartFromSnapshotAndLog(t *testing.T) {
	dir := t.TempDir()
	c := &testCluster{t: t, stores: newMemStores("s1", "s2", "s3")}
	addr, tr := raft.NewInmemTransport("")
	peers := []Peer{{ID: "d1", Addr: string(addr)}}
	n := c.startNode("d1", tr, dir, peers, nil)
	c.leader()
	cmds := func(from, to uint32) {
		for vid := from; vid < to; vid++ {
			if err := n.raft.Apply(context.Background(), Command{Type: CmdCreateVolume, Volume: &VolumeRecord{Vid: vid, State: StateWritable,
				Replicas: []ReplicaRecord{{StoreID: "s1"}}}}); err != nil {
				t.Fatal(err)
			}
			if err := n.raft.Apply(context.Background(), Command{Type: CmdReserveKeys, HighWater: uint64(vid) * 100}); err != nil {
				t.Fatal(err)
			}
		}
	}
	cmds(1, 20)
	if err := n.raft.Snapshot(); err != nil {
		t.Fatal(err)
	}
	cmds(20, 30) // after the snapshot: only in the log
	var want bytes.Buffer
	n.fsm.WriteSnapshot(&want)
	n.stop()
	c.nodes = nil

	_, tr2 := raft.NewInmemTransport(addr)
	m := c.startNode("d1", tr2, dir, nil, nil)
	defer m.stop()
	c.leader()
	var got bytes.Buffer
	m.fsm.WriteSnapshot(&got)
	if got.String() != want.String() {
		t.Fatalf("state after restart\n%s\nwant\n%s", got.String(), want.String())
	}
	if m.fsm.HighWater() != 2900 || len(m.fsm.Volumes()) != 29 {
		t.Fatalf("high water %d, %d volumes", m.fsm.HighWater(), len(m.fsm.Volumes()))
	}
	if idx := m.raft.Raw().Stats()["last_snapshot_index"]; idx == "0" {
		t.Fatal("no snapshot was taken")
	}
}

// A node added after the log was compacted catches up from a snapshot.
func TestRaftNewNodeCatchesUpFromSnapshot(t *testing.T) {
	tweak := func(o *RaftOptions) {
		o.TrailingLogs, o.SnapshotThreshold = 5, 10
		// The steps below talk to one leader: timeouts that a loaded
		// machine does not turn into an election.
		o.HeartbeatTimeout, o.ElectionTimeout, o.LeaderLeaseTimeout = time.Second, time.Second, 500*time.Millisecond
	}
	c := newTestCluster(t, 3, tweak)
	l := c.leader()
	for i := range 60 {
		if err := l.raft.Apply(context.Background(), Command{Type: CmdReserveKeys, HighWater: uint64(i+1) * 10}); err != nil {
			t.Fatal(err)
		}
	}
	// Every node compacts its log, so whichever node leads when the new
	// one joins (leadership may move on a loaded machine) has to send it a
	// snapshot.
	waitFor(t, "every node applied the commands", func() error {
		for _, n := range c.nodes {
			if got := n.fsm.HighWater(); got != 600 {
				return fmt.Errorf("%s: high water %d", n.id, got)
			}
		}
		return nil
	})
	for _, n := range c.nodes {
		if err := n.raft.Snapshot(); err != nil {
			t.Fatal(err)
		}
	}
	addr, tr := raft.NewInmemTransport("")
	for _, n := range c.nodes {
		n.trans.Connect(addr, tr)
		tr.Connect(n.trans.LocalAddr(), n.trans)
	}
	nn := c.startNode("d4", tr, "", nil, tweak)
	if err := l.raft.AddVoter("d4", string(addr)); err != nil {
		t.Fatal(err)
	}
	// The state machine holds the snapshot's state a moment before raft
	// records the install, so wait for both: a node that caught up from
	// the log instead never shows a snapshot index, and the wait fails.
	waitFor(t, "the new node catches up from a snapshot", func() error {
		if nn.fsm.HighWater() != 600 {
			return fmt.Errorf("high water %d", nn.fsm.HighWater())
		}
		if idx := nn.raft.Raw().Stats()["last_snapshot_index"]; idx == "0" {
			return fmt.Errorf("no snapshot installed: %v", nn.raft.Raw().Stats())
		}
		return nil
	})
	members, err := l.raft.Members()
	if err != nil || len(members) != 4 {
		t.Fatalf("members %+v, %v", members, err)
	}
	var a, b bytes.Buffer
	l.fsm.WriteSnapshot(&a)
	nn.fsm.WriteSnapshot(&b)
	if !reflect.DeepEqual(a.String(), b.String()) {
		t.Fatalf("states differ:\n%s\n%s", a.String(), b.String())
	}

}

// A follower cut off from the leader stops answering reads from its
// state, which may be stale, and answers not-leader; once it hears from the
// leader again it serves them.
func TestRaftStaleFollowerRefusesReads(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	l := c.leader()
	c.beat()
	if _, err := l.d.Assign(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	vid := l.fsm.Volumes()[0].Vid
	var f *testNode
	for _, n := range c.nodes {
		if n != l {
			f = n
			break
		}
	}
	waitFor(t, "the follower serves lookups", func() error {
		_, _, err := f.d.Lookup(vid)
		return err
	})
	f.trans.DisconnectAll()
	for _, n := range c.nodes {
		if n != f {
			n.trans.Disconnect(f.trans.LocalAddr())
		}
	}
	waitFor(t, "the cut-off follower refuses lookups", func() error {
		_, _, err := f.d.Lookup(vid)
		if !errors.Is(err, ErrNotLeader) {
			return fmt.Errorf("lookup on a cut-off follower: %v", err)
		}
		return nil
	})
	if _, _, err := f.d.PhotoURLs(fmt.Sprintf("%d-1-0000000000000001", vid)); !errors.Is(err, ErrNotLeader) {
		t.Errorf("PhotoURLs on a cut-off follower: %v", err)
	}
	for _, n := range c.nodes {
		if n != f {
			n.trans.Connect(f.trans.LocalAddr(), f.trans)
			f.trans.Connect(n.trans.LocalAddr(), n.trans)
		}
	}
	waitFor(t, "the healed follower serves lookups", func() error {
		_, _, err := f.d.Lookup(vid)
		return err
	})
}
