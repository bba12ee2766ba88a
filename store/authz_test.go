package store

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/rpc/rpctest"
	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

func TestPolicyCoversEveryMethod(t *testing.T) {
	if err := Policy.Covers(&storepb.Store_ServiceDesc); err != nil {
		t.Fatal(err)
	}
}

// tlsStore serves a store on a TLS plane of ca, with a store certificate
// named name, and returns it with a dialer of its gRPC address.
func tlsStore(t *testing.T, ca *rpctest.CA, name string) (*testServer, func(role pki.Role) storepb.StoreClient) {
	t.Helper()
	ts := startServer(t, Options{Dir: "/" + name, FS: vfs.NewMem()}, ServerOptions{Credentials: ca.Creds(t, pki.RoleStore, name)})
	dial := func(creds *rpc.Credentials) storepb.StoreClient {
		conn, err := rpc.Dial(creds, ts.srv.GRPCAddr().String(), []pki.Role{pki.RoleStore})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return storepb.NewStoreClient(conn)
	}
	ts.client = dial(ca.Creds(t, pki.RoleOperator, "setup"))
	return ts, func(role pki.Role) storepb.StoreClient { return dial(ca.Creds(t, role, "caller")) }
}

// storeCalls calls every method of the Store service with a request that
// would change the store (or reveal data) if it were allowed.
var storeCalls = map[string]func(ctx context.Context, c storepb.StoreClient) error{
	storepb.Store_Write_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.Write(ctx, &storepb.WriteRequest{Vid: 1, WriteToken: "t", Needles: []*storepb.Needle{{Key: 7, Cookie: 1, Data: []byte("x")}}})
		return err
	},
	storepb.Store_Delete_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.Delete(ctx, &storepb.DeleteRequest{Vid: 1, Key: 4, Cookie: 9, SizeCode: uint32(needle.SizeAll), WriteToken: "t"})
		return err
	},
	storepb.Store_Read_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.Read(ctx, &storepb.ReadRequest{Vid: 1, Key: 4, Cookie: 9, IncludeRaw: true})
		return err
	},
	storepb.Store_AllocateVolume_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 5})
		return err
	},
	storepb.Store_VolumeStatus_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.VolumeStatus(ctx, &storepb.VolumeStatusRequest{})
		return err
	},
	storepb.Store_MarkReadOnly_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: 1})
		return err
	},
	storepb.Store_Compact_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.Compact(ctx, &storepb.CompactRequest{Vid: 1})
		return err
	},
	storepb.Store_CopyVolume_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		s, err := c.CopyVolume(ctx, &storepb.CopyVolumeRequest{Vid: 1})
		if err != nil {
			return err
		}
		for {
			if _, err := s.Recv(); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
		}
	},
	storepb.Store_ReplicateVolume_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		s, err := c.ReplicateVolume(ctx, &storepb.ReplicateVolumeRequest{Vid: 1, SourceGrpcAddr: "127.0.0.1:1"})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	},
	storepb.Store_ListNeedles_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		s, err := c.ListNeedles(ctx, &storepb.ListNeedlesRequest{Vid: 1})
		if err != nil {
			return err
		}
		return drain(s.Recv)
	},
	storepb.Store_EcShardRead_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.EcShardRead(ctx, &storepb.EcShardReadRequest{Vid: 1, Shard: 0, Length: 8})
		return err
	},
	storepb.Store_EcEncode_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.EcEncode(ctx, &storepb.EcEncodeRequest{Vid: 1})
		return err
	},
	storepb.Store_EcDecode_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.EcDecode(ctx, &storepb.EcDecodeRequest{Vid: 1})
		return err
	},
	storepb.Store_EcShardCopy_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		s, err := c.EcShardCopy(ctx, &storepb.EcShardCopyRequest{Vid: 1, Name: "ecx"})
		if err != nil {
			return err
		}
		return drain(s.Recv)
	},
	storepb.Store_EcShardMount_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.EcShardMount(ctx, &storepb.EcShardMountRequest{Vid: 1, Shards: []uint32{0}, SourceGrpcAddr: "127.0.0.1:1"})
		return err
	},
	storepb.Store_EcShardDelete_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.EcShardDelete(ctx, &storepb.EcShardDeleteRequest{Vid: 1, Shards: []uint32{0}, RemoveVolume: true})
		return err
	},
	storepb.Store_EcRebuild_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.EcRebuild(ctx, &storepb.EcRebuildRequest{Vid: 1, Shards: []uint32{0}})
		return err
	},
	storepb.Store_EcIndexSync_FullMethodName: func(ctx context.Context, c storepb.StoreClient) error {
		_, err := c.EcIndexSync(ctx, &storepb.EcIndexSyncRequest{Vid: 1})
		return err
	},
}

// drain receives a stream's messages to its end and returns its error (nil
// at a clean end).
func drain[T any](recv func() (T, error)) error {
	for {
		if _, err := recv(); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// Every method of the Store service has a call in storeCalls, so the role
// checks below cover each one.
func TestStoreCallsCoverEveryMethod(t *testing.T) {
	for _, m := range storepb.Store_ServiceDesc.Methods {
		if name := "/" + storepb.Store_ServiceDesc.ServiceName + "/" + m.MethodName; storeCalls[name] == nil {
			t.Errorf("no role-check call for %s", name)
		}
	}
	for _, s := range storepb.Store_ServiceDesc.Streams {
		if name := "/" + storepb.Store_ServiceDesc.ServiceName + "/" + s.StreamName; storeCalls[name] == nil {
			t.Errorf("no role-check call for %s", name)
		}
	}
}

// TestRoleChecks calls every method as every role the policy does not
// list, and without a certificate, and checks each call is refused with
// nothing changed.
func TestRoleChecks(t *testing.T) {
	ca := rpctest.New(t)
	ts, as := tlsStore(t, ca, "s1")
	ctx := context.Background()
	ts.allocate(t, 1)
	if _, err := ts.client.Write(ctx, &storepb.WriteRequest{Vid: 1, WriteToken: "t", Needles: []*storepb.Needle{{Key: 4, Cookie: 9, ContentType: uint32(needle.TypeJPEG), Data: []byte("a")}}}); err != nil {
		t.Fatal(err)
	}
	before := volumeState(t, ts)
	for method, call := range storeCalls {
		for _, role := range pki.Roles {
			if slices.Contains(Policy[method], role) {
				continue
			}
			wantCode(t, string(role)+" calling "+method, call(ctx, as(role)), codes.PermissionDenied)
		}
		// A plain-text caller, and a caller with a certificate from
		// another CA, do not even get a connection.
		conn, err := rpc.Dial(rpc.Insecure(), ts.srv.GRPCAddr().String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		wantCode(t, "plain text calling "+method, call(ctx, storepb.NewStoreClient(conn)), codes.Unavailable)
		conn.Close()
		other := rpctest.New(t)
		conn, err = rpc.Dial(other.Creds(t, pki.RoleOperator, "ops"), ts.srv.GRPCAddr().String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		wantCode(t, "another CA's operator calling "+method, call(ctx, storepb.NewStoreClient(conn)), codes.Unavailable)
		conn.Close()
	}
	if after := volumeState(t, ts); after != before {
		t.Fatalf("refused calls changed the store: %+v -> %+v", before, after)
	}
	if resp, _ := ts.do(t, http.MethodGet, "/p/1-4-0000000000000009/t", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("photo gone after refused calls: %d", resp.StatusCode)
	}
	// The allowed roles get through the role check (they may still fail
	// for other reasons, such as the token).
	for method, call := range storeCalls {
		for _, role := range Policy[method] {
			// ReplicateVolume and EcShardMount answer UNAVAILABLE for their
			// unreachable source, after the role check.
			sourced := method == storepb.Store_ReplicateVolume_FullMethodName || method == storepb.Store_EcShardMount_FullMethodName
			if code := codeOf(call(ctx, as(role))); code == codes.PermissionDenied || code == codes.Unavailable && !sourced {
				t.Errorf("%s calling %s: %v", role, method, code)
			}
		}
	}
}

type volState struct {
	states  string
	needles int64
	size    int64
}

func volumeState(t *testing.T, ts *testServer) volState {
	t.Helper()
	var s volState
	for _, v := range ts.srv.Store().Volumes() {
		st := v.Status()
		s.states += fmt.Sprintf("%d:%v,", st.Vid, st.State)
		s.needles += int64(st.Needles)
		s.size += st.Size
	}
	return s
}

// A store asked to replicate from a source that is not a store of the
// cluster refuses, and keeps its copy.
func TestReplicateRefusesRogueSource(t *testing.T) {
	ca := rpctest.New(t)
	victim, _ := tlsStore(t, ca, "victim")
	ctx := context.Background()
	victim.allocate(t, 1)
	if _, err := victim.client.Write(ctx, &storepb.WriteRequest{Vid: 1, WriteToken: "t", Needles: []*storepb.Needle{{Key: 4, Cookie: 9, ContentType: uint32(needle.TypeJPEG), Data: []byte("a")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := victim.client.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: 1}); err != nil {
		t.Fatal(err)
	}
	before := volumeState(t, victim)

	// A rogue server with a gateway certificate of the same CA, holding an
	// empty read-only volume 1.
	rogue := startServer(t, Options{Dir: "/rogue", FS: vfs.NewMem()}, ServerOptions{Credentials: ca.Creds(t, pki.RoleGateway, "rogue")})
	// And one with a store certificate from another CA.
	other := rpctest.New(t)
	foreign := startServer(t, Options{Dir: "/foreign", FS: vfs.NewMem()}, ServerOptions{Credentials: other.Creds(t, pki.RoleStore, "foreign")})
	for _, src := range []*testServer{rogue, foreign} {
		st := src.srv.Store()
		v, err := st.CreateVolume(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.MarkReadOnly(ctx, "rogue"); err != nil {
			t.Fatal(err)
		}
	}
	dir := ca.Creds(t, pki.RoleDirectory, "dir")
	conn, err := rpc.Dial(dir, victim.srv.GRPCAddr().String(), []pki.Role{pki.RoleStore})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := storepb.NewStoreClient(conn)
	for _, src := range []*testServer{rogue, foreign} {
		s, err := c.ReplicateVolume(ctx, &storepb.ReplicateVolumeRequest{Vid: 1, SourceGrpcAddr: src.srv.GRPCAddr().String()})
		if err == nil {
			for err == nil {
				_, err = s.Recv()
			}
		}
		wantCode(t, "replicate from "+src.srv.GRPCAddr().String(), err, codes.Unavailable)
	}
	if after := volumeState(t, victim); after != before {
		t.Fatalf("the victim's volume changed: %+v -> %+v", before, after)
	}
	if resp, _ := victim.do(t, http.MethodGet, "/p/1-4-0000000000000009/t", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("photo gone after a rogue replication: %d", resp.StatusCode)
	}
}

func codeOf(err error) codes.Code {
	return status.Code(err)
}
