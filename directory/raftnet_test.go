package directory

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
)

// issueNode issues a certificate of ca for role/name, valid for 127.0.0.1.
func issueNode(t *testing.T, ca *pki.CA, role pki.Role, name string) *pki.Node {
	t.Helper()
	is, err := ca.Issue(pki.IssueOptions{Identity: pki.Identity{Role: role, Name: name}, Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	n, err := ca.Node(is)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type tlsRaftNode struct {
	id    string
	trans *raft.NetworkTransport
	fsm   *FSM
	raft  *Raft
}

// startTLSCluster starts three raft nodes over the TLS transport, with
// certificates of ca.
func startTLSCluster(t *testing.T, ca *pki.CA) []*tlsRaftNode {
	t.Helper()
	var nodes []*tlsRaftNode
	var peers []Peer
	for i := range 3 {
		id := fmt.Sprintf("d%d", i+1)
		ro := RaftOptions{ID: id, Addr: "127.0.0.1:0", Credentials: rpc.TLS(issueNode(t, ca, pki.RoleDirectory, id)), Logger: quietLogger()}
		tr, err := openTransport(ro, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, &tlsRaftNode{id: id, trans: tr, fsm: OpenMemoryFSM()})
		peers = append(peers, Peer{ID: id, Addr: string(tr.LocalAddr())})
	}
	for _, n := range nodes {
		ro := raftOptions(n.id, n.trans, "")
		ro.Bootstrap = peers
		// Real sockets, TLS handshakes and a loaded machine (the race
		// detector, parallel packages): timeouts that no stall of a few
		// hundred milliseconds turns into an election, since the tests
		// check that the leader and term stay as they were.
		ro.HeartbeatTimeout, ro.ElectionTimeout, ro.LeaderLeaseTimeout = time.Second, time.Second, 500*time.Millisecond
		var err error
		if n.raft, err = OpenRaft(ro, n.fsm); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.raft.Close()
			n.trans.Close()
		}
	})
	return nodes
}

func tlsLeader(t *testing.T, nodes []*tlsRaftNode) *tlsRaftNode {
	t.Helper()
	var found *tlsRaftNode
	waitFor(t, "a leader over TLS", func() error {
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

// waitHighWater waits until every node applied the key mark hw.
func waitHighWater(t *testing.T, nodes []*tlsRaftNode, hw uint64) {
	t.Helper()
	waitFor(t, "the key mark on every node", func() error {
		for _, n := range nodes {
			if got := n.fsm.HighWater(); got != hw {
				return fmt.Errorf("%s: high water %d, want %d", n.id, got, hw)
			}
		}
		return nil
	})
}

func TestRaftOverTLSElectsAndReplicates(t *testing.T) {
	ca, err := pki.NewCA("test CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	nodes := startTLSCluster(t, ca)
	leader := tlsLeader(t, nodes)
	if err := leader.raft.Apply(context.Background(), Command{Type: CmdReserveKeys, HighWater: 4242}); err != nil {
		t.Fatal(err)
	}
	waitHighWater(t, nodes, 4242)
}

// rogueTransport is a raft transport that dials with client.
func rogueTransport(t *testing.T, client *tls.Config) *raft.NetworkTransport {
	t.Helper()
	stream, err := listenTLSStreamLayer("127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13}, client, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	tr := raft.NewNetworkTransportWithLogger(stream, 1, 2*time.Second, hclog.NewNullLogger())
	t.Cleanup(func() { tr.Close() })
	return tr
}

func TestRaftOverTLSRefusesOtherPeers(t *testing.T) {
	ca, err := pki.NewCA("test CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("another CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	nodes := startTLSCluster(t, ca)
	leader := tlsLeader(t, nodes)
	if err := leader.raft.Apply(context.Background(), Command{Type: CmdReserveKeys, HighWater: 100}); err != nil {
		t.Fatal(err)
	}
	waitHighWater(t, nodes, 100)
	term := leader.raft.Raw().CurrentTerm()
	lastIndex := leader.raft.Raw().LastIndex()
	target := leader.trans.LocalAddr()

	storeNode := issueNode(t, ca, pki.RoleStore, "s1")
	foreign := issueNode(t, other, pki.RoleDirectory, "d9")
	roots := issueNode(t, ca, pki.RoleDirectory, "d9").Roots
	cases := []struct {
		name   string
		client *tls.Config
	}{
		// A store of this cluster: right CA, wrong role.
		{"store certificate", storeNode.ClientTLSExpecting(pki.RoleDirectory)},
		// A directory certificate from another CA, trusting this one.
		{"another CA", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{foreign.Cert}, RootCAs: roots}},
		// No client certificate at all.
		{"no certificate", &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr := rogueTransport(t, c.client)
			hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("rogue"), Addr: []byte(tr.LocalAddr())}
			var vresp raft.RequestVoteResponse
			err := tr.RequestVote("d1", target, &raft.RequestVoteRequest{RPCHeader: hdr, Term: term + 100,
				LastLogIndex: lastIndex + 100, LastLogTerm: term + 100, LeadershipTransfer: true}, &vresp)
			if err == nil {
				t.Fatalf("a vote request was answered (granted %v)", vresp.Granted)
			}
			cmd, err := EncodeCommand(Command{Type: CmdReserveKeys, HighWater: 1 << 60})
			if err != nil {
				t.Fatal(err)
			}
			var aresp raft.AppendEntriesResponse
			err = tr.AppendEntries("d1", target, &raft.AppendEntriesRequest{RPCHeader: hdr, Term: term + 100,
				PrevLogEntry: lastIndex, PrevLogTerm: term, LeaderCommitIndex: lastIndex + 1,
				Entries: []*raft.Log{{Index: lastIndex + 1, Term: term + 100, Type: raft.LogCommand, Data: cmd}}}, &aresp)
			if err == nil {
				t.Fatalf("an append request was answered (success %v)", aresp.Success)
			}
		})
	}
	// The cluster is as it was: same leader, same term, same key mark.
	if e, _ := leader.raft.Leadership(); e == 0 {
		t.Fatal("the leader lost its leadership")
	}
	for _, n := range nodes {
		if got := n.raft.Raw().CurrentTerm(); got != term {
			t.Errorf("%s: term %d, want %d", n.id, got, term)
		}
		if got := n.fsm.HighWater(); got != 100 {
			t.Errorf("%s: high water %d, want 100", n.id, got)
		}
	}

	// A directory of this cluster does get through (so the refusals above
	// are the certificate checks, not a broken client): a vote request at
	// the current term is answered, and refused since there is a leader.
	peer := issueNode(t, ca, pki.RoleDirectory, "d9")
	tr := rogueTransport(t, peer.ClientTLSExpecting(pki.RoleDirectory))
	hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("d9"), Addr: []byte(tr.LocalAddr())}
	var vresp raft.RequestVoteResponse
	if err := tr.RequestVote("d1", target, &raft.RequestVoteRequest{RPCHeader: hdr, Term: term}, &vresp); err != nil {
		t.Fatalf("a directory of the cluster cannot reach raft: %v", err)
	}
	if vresp.Granted {
		t.Fatal("vote granted at the current term while a leader exists")
	}
}

func TestRaftDialRefusesNonDirectoryServer(t *testing.T) {
	ca, err := pki.NewCA("test CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	// A store's certificate listening where a directory is expected.
	st := issueNode(t, ca, pki.RoleStore, "s1")
	impostor, err := listenTLSStreamLayer("127.0.0.1:0", st.ServerTLS(), st.ClientTLS(), quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer impostor.Close()
	go func() {
		for {
			c, err := impostor.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Read(make([]byte, 1))
			}()
		}
	}()
	d1, err := newTLSStreamLayer("127.0.0.1:0", issueNode(t, ca, pki.RoleDirectory, "d1"), quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	c, err := d1.Dial(raft.ServerAddress(impostor.Addr().String()), 5*time.Second)
	if err == nil {
		c.Close()
		t.Fatal("dialed a store as a raft peer")
	}
}

func TestRaftTLSListenerNeedsDialableAddress(t *testing.T) {
	ca, err := pki.NewCA("test CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = newTLSStreamLayer("0.0.0.0:0", issueNode(t, ca, pki.RoleDirectory, "d1"), quietLogger())
	if err == nil {
		t.Fatal("a wildcard raft address was accepted")
	}
}
