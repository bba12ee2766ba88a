package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// dirNode is one directory process of a raft cluster and how to start it
// again over the same data.
type dirNode struct {
	id, grpc, http, raft string
	args                 []string
	proc                 *proc
}

func (n *dirNode) start(t *testing.T) {
	t.Helper()
	n.proc = startHaybale(t, n.id, n.args...)
	waitHealthy(t, n.proc, "http://"+n.http+"/healthz")
}

// nodeStatus is the part of a directory node's /api/v1/status the test
// reads.
type nodeStatus struct {
	Leading   bool   `json:"leading"`
	HighWater uint64 `json:"key_high_water"`
	VidMark   uint32 `json:"vid_mark"`
	Raft      *struct {
		State   string `json:"state"`
		Term    uint64 `json:"term"`
		Applied uint64 `json:"applied_index"`
		Members []struct {
			ID string `json:"id"`
		} `json:"members"`
	} `json:"raft"`
	Volumes []struct {
		Vid    uint32 `json:"vid"`
		Reason string `json:"reason"`
	} `json:"volumes"`
}

func statusOf(n *dirNode) (nodeStatus, error) {
	var st nodeStatus
	resp, body, err := tryFetch("http://" + n.http + "/api/v1/status")
	if err != nil {
		return st, err
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s status: %d", n.id, resp.StatusCode)
	}
	return st, json.Unmarshal(body, &st)
}

// leaderOf waits until one running node of nodes leads and returns it.
func leaderOf(t *testing.T, nodes []*dirNode) *dirNode {
	t.Helper()
	var found *dirNode
	eventually(t, 20*time.Second, "a directory leader", func() error {
		for _, n := range nodes {
			if n.proc.exited() {
				continue
			}
			if st, err := statusOf(n); err == nil && st.Leading {
				found = n
				return nil
			}
		}
		return fmt.Errorf("no node leads")
	})
	return found
}

// uploadLog records the uploads of TestDirectoryFailover.
type uploadLog struct {
	mu       sync.Mutex
	acked    []photo
	ackedAt  []time.Time
	failed   int
	failedAt time.Time // start of the current run of failures, zero when none
	longest  time.Duration
	slowest  time.Duration // the longest upload that succeeded
	readErrs []string
	reads    int
}

func (l *uploadLog) record(p photo, ok bool, began, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !ok {
		l.failed++
		if l.failedAt.IsZero() {
			l.failedAt = at
		}
		return
	}
	l.acked = append(l.acked, p)
	l.ackedAt = append(l.ackedAt, at)
	l.slowest = max(l.slowest, at.Sub(began))
	if !l.failedAt.IsZero() {
		l.longest = max(l.longest, at.Sub(l.failedAt))
		l.failedAt = time.Time{}
	}
}

func (l *uploadLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// TestDirectoryFailover runs three directory processes in a raft cluster,
// three stores, a cache and a gateway. Uploads run all along while the
// directory's leader is killed with SIGKILL twice, the first time while it
// allocates a volume when the test catches one; each killed node is
// started again and catches up. Reads of acknowledged photos never fail,
// no key is issued twice and no acknowledged photo is lost. The longest
// time uploads kept failing, and the slowest upload (one that waited for
// the new leader), are logged.
func TestDirectoryFailover(t *testing.T) {
	base := t.TempDir()
	issue := clusterCA(t, base)
	secret := filepath.Join(base, "secret")
	if err := os.WriteFile(secret, []byte(strings.Repeat("e2e-failover-secret-", 4)), 0o600); err != nil {
		t.Fatal(err)
	}
	common := []string{"--log-level", "warn"}
	cacheHTTP, cacheIntern, gwHTTP := freePort(t), freePort(t), freePort(t)
	cacheURL := "http://" + cacheHTTP

	nodes := make([]*dirNode, 3)
	var peers, grpcs []string
	for i := range nodes {
		n := &dirNode{id: fmt.Sprintf("d%d", i+1), grpc: freePort(t), http: freePort(t), raft: freePort(t)}
		nodes[i] = n
		peers = append(peers, n.id+"@"+n.raft)
		grpcs = append(grpcs, n.grpc)
	}
	dirList := strings.Join(grpcs, ",")
	for _, n := range nodes {
		n.args = append([]string{"directory", "--certs-dir", issue("directory", n.id),
			"--dir", filepath.Join(base, n.id), "--grpc", n.grpc, "--http", n.http,
			"--raft-id", n.id, "--raft-addr", n.raft, "--bootstrap", strings.Join(peers, ","),
			"--replication", "2", "--heartbeat-interval", "300ms", "--volume-size-limit", "2MiB",
			"--secret-file", secret, "--cache-nodes", cacheURL}, common...)
		n.proc = startHaybale(t, n.id, n.args...)
	}
	for _, n := range nodes {
		waitHealthy(t, n.proc, "http://"+n.http+"/healthz")
	}
	leader := leaderOf(t, nodes)
	refusePlainRaft(t, leader)

	for i := range 3 {
		s := &clusterStore{name: fmt.Sprintf("store%d", i), http: freePort(t), grpc: freePort(t)}
		s.args = append([]string{"store", "--certs-dir", issue("store", s.name),
			"--dir", filepath.Join(base, s.name), "--http", s.http, "--grpc", s.grpc,
			"--directory", dirList, "--rack", fmt.Sprintf("rack%d", i), "--secret-file", secret,
			"--volume-size-limit", "2MiB"}, common...)
		s.start(t)
	}
	waitAlive(t, leader.http, 3)
	cache := startHaybale(t, "cache", append([]string{"cache", "--certs-dir", issue("cache", "cache1"),
		"--directory", dirList, "--http", cacheHTTP, "--internal", cacheIntern, "--capacity", "64MiB", "--lookup-ttl", "1s"}, common...)...)
	gw := startHaybale(t, "gateway", append([]string{"gateway", "--certs-dir", issue("gateway", "gw1"),
		"--directory", dirList, "--http", gwHTTP, "--cache-nodes", cacheURL, "--cache-internal", cacheIntern}, common...)...)
	waitHealthy(t, cache, cacheURL+"/healthz")
	gateway := "http://" + gwHTTP
	waitHealthy(t, gw, gateway+"/healthz")

	var images [][]byte
	for i := range 6 {
		images = append(images, syntheticJPEG(t, 320+16*i, 240, i))
	}
	log := &uploadLog{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // uploads, one after another, all along
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			began := time.Now()
			status, p, _, err := upload(gateway, images[i%len(images)])
			log.record(p, err == nil && status == http.StatusCreated, began, time.Now())
		}
	}()
	go func() { // reads of photos acknowledged half a second ago or more
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			// Followers answer lookups once they applied what they know
			// committed; a volume created a moment ago may not be known to
			// them yet, hence the half second.
			log.mu.Lock()
			n := 0
			for n < len(log.ackedAt) && time.Since(log.ackedAt[n]) >= 500*time.Millisecond {
				n++
			}
			var p photo
			if n > 0 {
				p = log.acked[(i*7919)%n]
			}
			log.mu.Unlock()
			if p.ID == "" {
				continue
			}
			resp, b, err := tryFetch(p.URLs["s"])
			log.mu.Lock()
			log.reads++
			if err != nil || resp.StatusCode != http.StatusOK || len(b) != p.Sizes["s"].Bytes {
				msg := fmt.Sprint(err)
				if resp != nil {
					msg = fmt.Sprintf("%d %s (want %d bytes)", resp.StatusCode, b, p.Sizes["s"].Bytes)
				}
				log.readErrs = append(log.readErrs, p.ID+": "+msg)
			}
			log.mu.Unlock()
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	waitUploads := func(what string, n int) {
		t.Helper()
		target := log.count() + n
		eventually(t, 30*time.Second, what, func() error {
			if got := log.count(); got < target {
				return fmt.Errorf("%d of %d uploads", got, target)
			}
			return nil
		})
	}
	waitUploads("uploads before the first failover", 30)

	// First kill: while the leader allocates a volume, when one shows.
	duringAlloc := false
	deadline := time.Now().Add(10 * time.Second)
	for !duringAlloc && time.Now().Before(deadline) {
		st, err := statusOf(leader)
		if err == nil {
			for _, v := range st.Volumes {
				duringAlloc = duringAlloc || v.Reason == "allocating"
			}
		}
		if !duringAlloc {
			time.Sleep(2 * time.Millisecond)
		}
	}
	for _, round := range []string{"first", "second"} {
		killedAt := time.Now()
		leader.proc.kill9()
		t.Logf("%s failover: killed the leader %s (during a volume allocation: %v)", round, leader.id, round == "first" && duringAlloc)
		killed := leader
		leader = leaderOf(t, nodes)
		t.Logf("%s failover: %s leads %v after the kill", round, leader.id, time.Since(killedAt).Round(time.Millisecond))
		waitUploads("uploads after the "+round+" failover", 30)
		// The killed node comes back over its data and catches up.
		killed.start(t)
		waitCaughtUp(t, leader, killed)
		waitUploads("uploads with the killed node back", 10)
	}
	close(stop)
	wg.Wait()

	log.mu.Lock()
	defer log.mu.Unlock()
	// The gateway's client waits for the new leader, so a failover shows
	// as a slow upload rather than a failed one.
	t.Logf("uploads: %d acknowledged, %d failed; longest run of failed uploads: %v; slowest acknowledged upload: %v; %d reads",
		len(log.acked), log.failed, log.longest.Round(time.Millisecond), log.slowest.Round(time.Millisecond), log.reads)
	for _, e := range log.readErrs {
		t.Errorf("read of an acknowledged photo failed: %s", e)
	}
	keys := map[string]string{}
	for _, p := range log.acked {
		parts := strings.Split(p.ID, "-")
		if len(parts) != 3 {
			t.Fatalf("photo ID %q", p.ID)
		}
		if other, dup := keys[parts[1]]; dup {
			t.Errorf("key %s issued twice: %s and %s", parts[1], other, p.ID)
		}
		keys[parts[1]] = p.ID
	}
	for _, p := range log.acked {
		for _, size := range sizeLetters {
			resp, b, err := tryFetch(gateway + "/photos/" + p.ID + "/" + size)
			if err != nil || resp.StatusCode != http.StatusOK || len(b) != p.Sizes[size].Bytes {
				t.Fatalf("acknowledged photo %s/%s lost: %v %v", p.ID, size, err, resp)
			}
		}
	}
	for _, n := range nodes {
		if st, err := statusOf(n); err != nil || st.Raft == nil || len(st.Raft.Members) != 3 {
			t.Errorf("%s after the test: %+v %v, want a member of a 3-node cluster", n.id, st.Raft, err)
		}
	}
}

// waitCaughtUp waits until node has applied what the leader had applied
// when the wait began, and agrees with it on the key and vid marks then.
func waitCaughtUp(t *testing.T, leader, node *dirNode) {
	t.Helper()
	eventually(t, 20*time.Second, node.id+" catches up with "+leader.id, func() error {
		ls, err := statusOf(leader)
		if err != nil {
			return err
		}
		ns, err := statusOf(node)
		if err != nil {
			return err
		}
		if ns.Raft == nil || ls.Raft == nil {
			return fmt.Errorf("no raft status")
		}
		if ns.Raft.Applied < ls.Raft.Applied || ns.HighWater < ls.HighWater || ns.VidMark < ls.VidMark {
			return fmt.Errorf("%s applied %d, marks %d/%d; %s applied %d, marks %d/%d",
				node.id, ns.Raft.Applied, ns.HighWater, ns.VidMark, leader.id, ls.Raft.Applied, ls.HighWater, ls.VidMark)
		}
		return nil
	})
}

// refusePlainRaft checks that the leader's raft port, which runs mutual
// TLS, answers no raft request sent in plain TCP: a vote request with a
// much higher term, which a reachable node would have to adopt, fails,
// and the node's term stays below it.
func refusePlainRaft(t *testing.T, leader *dirNode) {
	t.Helper()
	before := raftStatusOf(t, leader)
	tr, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 1, 2*time.Second, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	req := &raft.RequestVoteRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("rogue"), Addr: []byte(tr.LocalAddr())},
		Term:      before.Term + 100, LastLogIndex: 1 << 40, LastLogTerm: before.Term + 100, LeadershipTransfer: true,
	}
	var resp raft.RequestVoteResponse
	if err := tr.RequestVote(raft.ServerID(leader.id), raft.ServerAddress(leader.raft), req, &resp); err == nil {
		t.Fatalf("the leader's raft port answered a plain-TCP vote request (granted %v)", resp.Granted)
	}
	// A vote request that got through would have moved the node to its
	// term; an ordinary election in the meantime moves it by one or two.
	if after := raftStatusOf(t, leader); after.Term >= req.Term {
		t.Fatalf("after a plain-TCP vote request for term %d the leader is %s in term %d (was term %d)", req.Term, after.State, after.Term, before.Term)
	}
}

// raftStatus is a node's raft state and term.
type raftStatus struct {
	State string
	Term  uint64
}

func raftStatusOf(t *testing.T, n *dirNode) raftStatus {
	t.Helper()
	st, err := statusOf(n)
	if err != nil {
		t.Fatal(err)
	}
	if st.Raft == nil {
		t.Fatalf("%s: no raft status", n.id)
	}
	return raftStatus{State: st.Raft.State, Term: st.Raft.Term}
}
