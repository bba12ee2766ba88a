package directory

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/rpc/rpctest"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
)

func TestPolicyCoversEveryMethod(t *testing.T) {
	if err := Policy.Covers(&directorypb.Directory_ServiceDesc); err != nil {
		t.Fatal(err)
	}
}

// tlsDirectory starts a directory on a TLS plane of ca and returns it
// with a function that returns a client with a certificate of role/name.
func tlsDirectory(t *testing.T, ca *rpctest.CA) (*Server, func(role pki.Role, name string) directorypb.DirectoryClient) {
	t.Helper()
	s := startDirectory(t, Options{Credentials: ca.Creds(t, pki.RoleDirectory, "dir")})
	return s, func(role pki.Role, name string) directorypb.DirectoryClient {
		conn, err := rpc.Dial(ca.Creds(t, role, name), s.GRPCAddr().String(), []pki.Role{pki.RoleDirectory})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return directorypb.NewDirectoryClient(conn)
	}
}

// heartbeat sends one report for store id over c and returns the error of
// the answer.
func heartbeatAs(c directorypb.DirectoryClient, id string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.Heartbeat(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&directorypb.HeartbeatRequest{StoreId: id, GrpcAddr: "127.0.0.1:1", HttpAddr: "127.0.0.1:2", FreeBytes: 1 << 40}); err != nil {
		_, err = stream.Recv()
		return err
	}
	_, err = stream.Recv()
	return err
}

var directoryCalls = map[string]func(ctx context.Context, c directorypb.DirectoryClient) error{
	directorypb.Directory_Assign_FullMethodName: func(ctx context.Context, c directorypb.DirectoryClient) error {
		_, err := c.Assign(ctx, &directorypb.AssignRequest{Count: 1})
		return err
	},
	directorypb.Directory_AuthorizeDelete_FullMethodName: func(ctx context.Context, c directorypb.DirectoryClient) error {
		_, err := c.AuthorizeDelete(ctx, &directorypb.AuthorizeDeleteRequest{PhotoId: "1-4-0000000000000009"})
		return err
	},
	directorypb.Directory_Lookup_FullMethodName: func(ctx context.Context, c directorypb.DirectoryClient) error {
		_, err := c.Lookup(ctx, &directorypb.LookupRequest{Vid: 1})
		return err
	},
	directorypb.Directory_PhotoURLs_FullMethodName: func(ctx context.Context, c directorypb.DirectoryClient) error {
		_, err := c.PhotoURLs(ctx, &directorypb.PhotoURLsRequest{PhotoId: "1-4-0000000000000009"})
		return err
	},
	directorypb.Directory_ListStores_FullMethodName: func(ctx context.Context, c directorypb.DirectoryClient) error {
		_, err := c.ListStores(ctx, &directorypb.ListStoresRequest{})
		return err
	},
	directorypb.Directory_ListVolumes_FullMethodName: func(ctx context.Context, c directorypb.DirectoryClient) error {
		_, err := c.ListVolumes(ctx, &directorypb.ListVolumesRequest{})
		return err
	},
	directorypb.Directory_MarkReadOnly_FullMethodName: func(ctx context.Context, c directorypb.DirectoryClient) error {
		_, err := c.MarkReadOnly(ctx, &directorypb.DirectoryMarkReadOnlyRequest{Vid: 1})
		return err
	},
	directorypb.Directory_Heartbeat_FullMethodName: func(_ context.Context, c directorypb.DirectoryClient) error {
		return heartbeatAs(c, "caller")
	},
	directorypb.Directory_AddMember_FullMethodName: func(ctx context.Context, c directorypb.DirectoryClient) error {
		_, err := c.AddMember(ctx, &directorypb.AddMemberRequest{Id: "d2", RaftAddr: "127.0.0.1:7072"})
		return err
	},
	directorypb.Directory_RemoveMember_FullMethodName: func(ctx context.Context, c directorypb.DirectoryClient) error {
		_, err := c.RemoveMember(ctx, &directorypb.RemoveMemberRequest{Id: "d1"})
		return err
	},
	directorypb.Directory_RemoveStore_FullMethodName: func(ctx context.Context, c directorypb.DirectoryClient) error {
		_, err := c.RemoveStore(ctx, &directorypb.RemoveStoreRequest{StoreId: "caller"})
		return err
	},
	directorypb.Directory_EcEncode_FullMethodName: func(ctx context.Context, c directorypb.DirectoryClient) error {
		stream, err := c.EcEncode(ctx, &directorypb.DirectoryEcEncodeRequest{Vid: 1})
		if err != nil {
			return err
		}
		_, err = stream.Recv()
		return err
	},
}

// stateOf is what a refused call must not change.
func stateOf(s *Server) string {
	return fmt.Sprintf("hw=%d stores=%v volumes=%v", s.FSM().HighWater(), s.FSM().Stores(), s.FSM().Volumes())
}

func TestRoleChecks(t *testing.T) {
	ca := rpctest.New(t)
	s, as := tlsDirectory(t, ca)
	ctx := context.Background()
	before := stateOf(s)
	for method, call := range directoryCalls {
		for _, role := range pki.Roles {
			if slices.Contains(Policy[method], role) {
				continue
			}
			if err := call(ctx, as(role, "caller")); status.Code(err) != codes.PermissionDenied {
				t.Errorf("%s calling %s: %v, want PermissionDenied", role, method, err)
			}
		}
		conn, err := rpc.Dial(rpc.Insecure(), s.GRPCAddr().String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := call(ctx, directorypb.NewDirectoryClient(conn)); status.Code(err) != codes.Unavailable {
			t.Errorf("plain text calling %s: %v, want Unavailable", method, err)
		}
		conn.Close()
	}
	if after := stateOf(s); after != before {
		t.Fatalf("refused calls changed the directory:\n%s\n%s", before, after)
	}
}

// A store may heartbeat only as the store ID its certificate names.
func TestHeartbeatIdentity(t *testing.T) {
	ca := rpctest.New(t)
	s, as := tlsDirectory(t, ca)
	if err := heartbeatAs(as(pki.RoleStore, "s1"), "s2"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("s1 heartbeating as s2: %v, want PermissionDenied", err)
	}
	if n := len(s.FSM().Stores()); n != 0 {
		t.Fatalf("an impersonating heartbeat registered %d stores", n)
	}
	if err := heartbeatAs(as(pki.RoleStore, "s1"), "s1"); err != nil {
		t.Fatalf("s1 heartbeating as itself: %v", err)
	}
	if st := s.FSM().Stores(); len(st) != 1 || st[0].ID != "s1" {
		t.Fatalf("stores after s1's heartbeat: %v", st)
	}
}

// The status page says when the internal plane is insecure.
func TestStatusShowsInsecure(t *testing.T) {
	page := func(s *Server) string {
		resp, err := http.Get("http://" + s.HTTPAddr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	insecure := startDirectory(t, Options{})
	if !insecure.Status().Insecure || !strings.Contains(page(insecure), "Insecure cluster") {
		t.Error("an insecure directory does not say so")
	}
	ca := rpctest.New(t)
	secure := startDirectory(t, Options{Credentials: ca.Creds(t, pki.RoleDirectory, "dir")})
	if secure.Status().Insecure || strings.Contains(page(secure), "Insecure cluster") {
		t.Error("a TLS directory says it is insecure")
	}
}

// Only operators (and directories forwarding for them) may erasure-code a
// volume: any other caller is refused and the volume and its store are
// left as they were.
func TestEcEncodeRoles(t *testing.T) {
	ca := rpctest.New(t)
	s, as := tlsDirectory(t, ca)
	ctx := context.Background()
	// A sealed volume on a recorded store, ready to encode.
	if err := s.FSM().Apply(Command{Type: CmdStoreReport, Store: &StoreRecord{ID: "s1", GRPCAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2"},
		Volumes: []VolumeReport{{Vid: 1, State: StateSealed, SizeBytes: 100, SizeLimit: 1000}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.FSM().Apply(Command{Type: CmdCreateVolume, Volume: &VolumeRecord{Vid: 1, State: StateSealed, SizeLimit: 1000,
		Replicas: []ReplicaRecord{{StoreID: "s1", VolumeReport: VolumeReport{Vid: 1, State: StateSealed}}}}}); err != nil {
		t.Fatal(err)
	}
	before := stateOf(s)
	call := directoryCalls[directorypb.Directory_EcEncode_FullMethodName]
	for _, role := range pki.Roles {
		err := call(ctx, as(role, "caller"))
		switch role {
		case pki.RoleOperator, pki.RoleDirectory:
			// Admitted: the replica's store does not answer, so the job
			// stops at its first question.
			if status.Code(err) != codes.Unavailable {
				t.Errorf("%s: %v, want Unavailable (the replica's store does not answer)", role, err)
			}
		default:
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("%s: %v, want PermissionDenied", role, err)
			}
		}
	}
	if after := stateOf(s); after != before {
		t.Fatalf("EcEncode calls changed the directory:\n%s\n%s", before, after)
	}
	if rec := s.d.ECStatus().Recent; len(rec) != 2 || rec[0].Trigger != ECTriggerOperator || rec[0].Result != "failed" {
		t.Fatalf("jobs %+v: want the two admitted calls, failed", rec)
	}
}
