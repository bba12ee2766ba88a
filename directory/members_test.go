package directory

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/dirconn"
	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/rpc/rpctest"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
)

// raftNodeOpts returns the options of a cluster node on an in-memory raft
// transport, with TLS credentials of ca.
func raftNodeOpts(t *testing.T, ca *rpctest.CA, id string, trans raft.Transport, bootstrap []Peer) Options {
	return Options{Credentials: ca.Creds(t, pki.RoleDirectory, id), Raft: &RaftOptions{ID: id, Transport: trans, InMemory: true,
		Bootstrap: bootstrap, HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
		LeaderLeaseTimeout: 50 * time.Millisecond}}
}

func memberIDs(ms []*directorypb.Member) []string {
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.GetId())
	}
	slices.Sort(ids)
	return ids
}

func raftMembers(t *testing.T, s *Server) []string {
	t.Helper()
	ms, err := s.Raft().Members()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestMembershipRPCs adds and removes a directory node and removes a
// store through the operator RPCs; the other roles are refused and change
// nothing.
func TestMembershipRPCs(t *testing.T) {
	ca := rpctest.New(t)
	// In-memory transports, named like TCP addresses as members must be.
	a1, t1 := raft.NewInmemTransport("127.0.0.1:17001")
	a2, t2 := raft.NewInmemTransport("127.0.0.1:17002")
	t1.Connect(a2, t2)
	t2.Connect(a1, t1)
	d1 := startDirectory(t, raftNodeOpts(t, ca, "d1", t1, []Peer{{ID: "d1", Addr: string(a1)}}))
	d2 := startDirectory(t, raftNodeOpts(t, ca, "d2", t2, nil))
	waitFor(t, "d1 leads", func() error {
		if e, _ := d1.Raft().Leadership(); e == 0 {
			return ErrNotLeader
		}
		return nil
	})
	as := func(s *Server, role pki.Role) directorypb.DirectoryClient {
		conn, err := rpc.Dial(ca.Creds(t, role, "caller"), s.GRPCAddr().String(), []pki.Role{pki.RoleDirectory})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return directorypb.NewDirectoryClient(conn)
	}
	ctx := context.Background()
	// A store registers.
	if err := heartbeatAs(as(d1, pki.RoleStore), "caller"); err != nil {
		t.Fatal(err)
	}

	for _, role := range pki.Roles {
		if role == pki.RoleOperator || role == pki.RoleDirectory {
			continue // a directory may forward an operator's call
		}
		c := as(d1, role)
		if _, err := c.AddMember(ctx, &directorypb.AddMemberRequest{Id: "d2", RaftAddr: string(a2)}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s adding a member: %v, want PermissionDenied", role, err)
		}
		if _, err := c.RemoveMember(ctx, &directorypb.RemoveMemberRequest{Id: "d1"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s removing a member: %v, want PermissionDenied", role, err)
		}
		if _, err := c.RemoveStore(ctx, &directorypb.RemoveStoreRequest{StoreId: "caller"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s removing a store: %v, want PermissionDenied", role, err)
		}
	}
	if got := raftMembers(t, d1); !slices.Equal(got, []string{"d1"}) {
		t.Fatalf("refused calls changed the members: %v", got)
	}
	if n := len(d1.FSM().Stores()); n != 1 {
		t.Fatalf("refused calls changed the stores: %d", n)
	}

	op := as(d1, pki.RoleOperator)
	if _, err := op.AddMember(ctx, &directorypb.AddMemberRequest{Id: "d2"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("AddMember without an address: %v, want InvalidArgument", err)
	}
	resp, err := op.AddMember(ctx, &directorypb.AddMemberRequest{Id: "d2", RaftAddr: string(a2)})
	if err != nil {
		t.Fatal(err)
	}
	if got := memberIDs(resp.GetMembers()); !slices.Equal(got, []string{"d1", "d2"}) {
		t.Fatalf("members after AddMember: %v", got)
	}
	// The new node catches up: it learns the store d1 recorded.
	waitFor(t, "d2 catches up", func() error {
		if len(d2.FSM().Stores()) != 1 {
			return ErrUnavailable
		}
		return nil
	})
	// A caller that follows the leader itself (internal/dirconn) gets the
	// not-leader answer rather than a forwarded call.
	follows := metadata.AppendToOutgoingContext(ctx, dirconn.FollowsLeaderKey, "1")
	if _, err := as(d2, pki.RoleOperator).RemoveStore(follows, &directorypb.RemoveStoreRequest{StoreId: "caller"}); err == nil {
		t.Error("a follower served RemoveStore for a caller that follows the leader")
	} else if _, ok := NotLeader(err); !ok {
		t.Errorf("RemoveStore on a follower, from a caller that follows the leader: %v, want a not-leader answer", err)
	}
	if n := len(d1.FSM().Stores()); n != 1 {
		t.Fatalf("%d stores after a call answered not-leader", n)
	}
	if _, err := op.RemoveMember(ctx, &directorypb.RemoveMemberRequest{Id: "d9"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("removing an unknown member: %v, want InvalidArgument", err)
	}
	// A follower checks the caller's role, then forwards what only the
	// leader may do to the leader.
	if _, err := as(d2, pki.RoleGateway).RemoveMember(ctx, &directorypb.RemoveMemberRequest{Id: "d2"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a gateway removing a member through a follower: %v, want PermissionDenied", err)
	}
	if got := raftMembers(t, d1); !slices.Equal(got, []string{"d1", "d2"}) {
		t.Fatalf("a refused call through a follower changed the members: %v", got)
	}
	// (retried while d2 has not yet heard from the leader since it joined)
	var rm *directorypb.RemoveMemberResponse
	waitFor(t, "RemoveMember through the follower", func() error {
		var err error
		rm, err = as(d2, pki.RoleOperator).RemoveMember(ctx, &directorypb.RemoveMemberRequest{Id: "d2"})
		return err
	})
	if got := memberIDs(rm.GetMembers()); !slices.Equal(got, []string{"d1"}) {
		t.Fatalf("members after RemoveMember: %v", got)
	}

	if _, err := op.RemoveStore(ctx, &directorypb.RemoveStoreRequest{StoreId: "nobody"}); status.Code(err) != codes.NotFound {
		t.Errorf("removing an unknown store: %v, want NotFound", err)
	}
	if _, err := op.RemoveStore(ctx, &directorypb.RemoveStoreRequest{StoreId: "caller"}); err != nil {
		t.Fatal(err)
	}
	if n := len(d1.FSM().Stores()); n != 0 {
		t.Fatalf("%d stores after RemoveStore", n)
	}
}

// A single-node directory has no membership to change.
func TestMembershipSingleNode(t *testing.T) {
	c := dirClient(t, startDirectory(t, Options{}))
	_, err := c.AddMember(context.Background(), &directorypb.AddMemberRequest{Id: "d2", RaftAddr: "127.0.0.1:7072"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("AddMember on a single node: %v, want FailedPrecondition", err)
	}
	if _, err := c.RemoveMember(context.Background(), &directorypb.RemoveMemberRequest{Id: "d1"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("RemoveMember on a single node: %v, want FailedPrecondition", err)
	}
}
