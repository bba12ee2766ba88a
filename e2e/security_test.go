package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// creds loads a node folder as credentials.
func creds(t *testing.T, dir string) *rpc.Credentials {
	t.Helper()
	n, err := pki.LoadNode(dir)
	if err != nil {
		t.Fatal(err)
	}
	return rpc.TLS(n)
}

func dirClientAs(t *testing.T, c *rpc.Credentials, addr string) directorypb.DirectoryClient {
	t.Helper()
	conn, err := rpc.Dial(c, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return directorypb.NewDirectoryClient(conn)
}

func storeClientAs(t *testing.T, c *rpc.Credentials, addr string) storepb.StoreClient {
	t.Helper()
	conn, err := rpc.Dial(c, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return storepb.NewStoreClient(conn)
}

func wantRefused(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if status.Code(err) != want {
		t.Errorf("%s: %v, want %v", what, err, want)
		return
	}
	t.Logf("refused as expected: %s: %v", what, status.Convert(err).Message())
}

// rogueStore is a gRPC server that answers as a store would, with a
// certificate that is not a store's: what a replication source an
// attacker controls looks like.
type rogueStore struct {
	storepb.UnimplementedStoreServer
}

func (rogueStore) VolumeStatus(_ context.Context, req *storepb.VolumeStatusRequest) (*storepb.VolumeStatusResponse, error) {
	return &storepb.VolumeStatusResponse{Volumes: []*storepb.VolumeInfo{{Vid: req.GetVid(), State: storepb.VolumeState_VOLUME_STATE_SEALED}}}, nil
}

func (rogueStore) CopyVolume(req *storepb.CopyVolumeRequest, s storepb.Store_CopyVolumeServer) error {
	return s.Send(&storepb.CopyVolumeResponse{Data: make([]byte, 64), TotalSize: 64})
}

func startRogue(t *testing.T, c *rpc.Credentials) string {
	t.Helper()
	srv, err := rpc.NewServer(c, rpc.Policy{storepb.Store_VolumeStatus_FullMethodName: pki.Roles, storepb.Store_CopyVolume_FullMethodName: pki.Roles}, rpc.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	storepb.RegisterStoreServer(srv, rogueStore{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// TestClusterRefusesAttacks runs a cluster of processes with certificates
// and tries, as an attacker on the same network, each attack the internal
// plane used to allow. Each is refused, nothing changes, and the cluster
// still serves.
func TestClusterRefusesAttacks(t *testing.T) {
	c := startCluster(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	status0, victim, body, err := upload(c.gateway, syntheticJPEG(t, 800, 600, 1))
	if err != nil || status0 != http.StatusCreated {
		t.Fatalf("upload: %d %s %v", status0, body, err)
	}
	id, err := needle.ParsePhotoID(victim.ID)
	if err != nil {
		t.Fatal(err)
	}
	victimPath := "/p/" + victim.ID + "/l"
	_, original := fetch(t, "http://"+c.stores[0].http+victimPath)
	if len(original) == 0 {
		t.Fatal("the victim photo is not stored")
	}

	// Identities an attacker might hold: none, a certificate of another
	// CA, or a cluster certificate of the wrong role.
	otherCA := clusterCA(t, t.TempDir())
	foreign := creds(t, otherCA("operator", "mallory"))
	gateway := creds(t, c.issue("gateway", "gw-attacker"))
	cacheRole := creds(t, c.issue("cache", "cache-attacker"))
	store1 := creds(t, c.issue("store", "store1-twin")) // a store, but not store0
	operator := creds(t, c.issue("operator", "ops"))

	// 1. Unauthenticated: plain text, and another CA's operator.
	for name, cr := range map[string]*rpc.Credentials{"plain text": rpc.Insecure(), "another CA": foreign} {
		_, err := dirClientAs(t, cr, c.dirGRPC).Assign(ctx, &directorypb.AssignRequest{Count: 1})
		wantRefused(t, name+" Assign", err, codes.Unavailable)
		_, err = storeClientAs(t, cr, c.stores[0].grpc).MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: id.Vid})
		wantRefused(t, name+" MarkReadOnly", err, codes.Unavailable)
		stream, err := storeClientAs(t, cr, c.stores[0].grpc).CopyVolume(ctx, &storepb.CopyVolumeRequest{Vid: id.Vid})
		if err == nil {
			_, err = stream.Recv()
		}
		wantRefused(t, name+" CopyVolume", err, codes.Unavailable)
	}

	// 2. Wrong role: a cache asking for write tokens, a gateway running
	// store administration, a store allocating on another store.
	_, err = dirClientAs(t, cacheRole, c.dirGRPC).Assign(ctx, &directorypb.AssignRequest{Count: 1})
	wantRefused(t, "cache Assign", err, codes.PermissionDenied)
	_, err = dirClientAs(t, cacheRole, c.dirGRPC).AuthorizeDelete(ctx, &directorypb.AuthorizeDeleteRequest{PhotoId: victim.ID})
	wantRefused(t, "cache AuthorizeDelete", err, codes.PermissionDenied)
	gwStore := storeClientAs(t, gateway, c.stores[0].grpc)
	_, err = gwStore.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: id.Vid})
	wantRefused(t, "gateway MarkReadOnly", err, codes.PermissionDenied)
	_, err = gwStore.Compact(ctx, &storepb.CompactRequest{Vid: id.Vid})
	wantRefused(t, "gateway Compact", err, codes.PermissionDenied)
	_, err = gwStore.Read(ctx, &storepb.ReadRequest{Vid: id.Vid, Key: id.Key, Cookie: id.Cookie, SizeCode: 3, IncludeRaw: true})
	wantRefused(t, "gateway Read", err, codes.PermissionDenied)
	stream, err := gwStore.CopyVolume(ctx, &storepb.CopyVolumeRequest{Vid: id.Vid})
	if err == nil {
		_, err = stream.Recv()
	}
	wantRefused(t, "gateway CopyVolume (would leak every cookie)", err, codes.PermissionDenied)
	_, err = storeClientAs(t, store1, c.stores[0].grpc).AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 999})
	wantRefused(t, "store AllocateVolume on another store", err, codes.PermissionDenied)

	// 3. Store impersonation: a store certificate heartbeating as store0,
	// to redirect its reads.
	hb, err := dirClientAs(t, store1, c.dirGRPC).Heartbeat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A refused stream may fail the Send or only the Recv; the Recv
	// carries the status either way.
	hb.Send(&directorypb.HeartbeatRequest{StoreId: "store0", GrpcAddr: "127.0.0.1:1", HttpAddr: "127.0.0.1:2", FreeBytes: 1 << 50})
	_, err = hb.Recv()
	wantRefused(t, "heartbeat as another store", err, codes.PermissionDenied)

	// 3b. An absurd vid: a store with a cluster certificate (a rogue or
	// compromised machine) reports vid 4294967295, which would make the
	// next vid wrap to 0 and stop uploads if it were adopted.
	rogueStore := creds(t, c.issue("store", "store-mallory"))
	hb, err = dirClientAs(t, rogueStore, c.dirGRPC).Heartbeat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := hb.Send(&directorypb.HeartbeatRequest{StoreId: "store-mallory", GrpcAddr: "127.0.0.1:1", HttpAddr: "127.0.0.1:2", FreeBytes: 1 << 40,
		Volumes: []*storepb.VolumeInfo{{Vid: 4294967295, State: storepb.VolumeState_VOLUME_STATE_WRITABLE, SizeLimitBytes: 1 << 30}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := hb.Recv(); err != nil {
		t.Fatalf("heartbeat of a store with its own certificate: %v", err)
	}
	hb.CloseSend()
	if lr, err := dirClientAs(t, operator, c.dirGRPC).Lookup(ctx, &directorypb.LookupRequest{Vid: 4294967295}); err == nil {
		t.Errorf("the directory adopted vid 4294967295: %v", lr)
	}

	// 4. A forged delete token used for a write: a gateway may ask for the
	// delete token of any photo ID, even with a made-up cookie, but the
	// token allows tombstones of that exact photo only.
	gwDir := dirClientAs(t, gateway, c.dirGRPC)
	forgedID := needle.PhotoID{Vid: id.Vid, Key: id.Key, Cookie: id.Cookie ^ 1}
	auth, err := gwDir.AuthorizeDelete(ctx, &directorypb.AuthorizeDeleteRequest{PhotoId: forgedID.String()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = gwStore.Write(ctx, &storepb.WriteRequest{Vid: id.Vid, WriteToken: auth.GetWriteToken(), Needles: []*storepb.Needle{
		{Key: id.Key, Cookie: id.Cookie, SizeCode: 3, ContentType: uint32(needle.TypeJPEG), Data: []byte("not a jpeg")},
	}})
	wantRefused(t, "write with a delete token", err, codes.Unauthenticated)
	// The same token cannot delete the real photo (wrong cookie).
	_, err = gwStore.Delete(ctx, &storepb.DeleteRequest{Vid: id.Vid, Key: id.Key, Cookie: id.Cookie, SizeCode: uint32(needle.SizeAll), WriteToken: auth.GetWriteToken()})
	wantRefused(t, "delete with a token for another cookie", err, codes.Unauthenticated)

	// 5. A rogue replication source: the operator (or an attacker who
	// tricked one) points store1 at a server holding a gateway's
	// certificate; store1 refuses it as a source and keeps its copy.
	rogue := startRogue(t, gateway)
	opStore := storeClientAs(t, operator, c.stores[1].grpc)
	if _, err := opStore.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: id.Vid, Reason: "e2e"}); err != nil {
		t.Fatal(err)
	}
	rs, err := opStore.ReplicateVolume(ctx, &storepb.ReplicateVolumeRequest{Vid: id.Vid, SourceGrpcAddr: rogue})
	if err == nil {
		for err == nil {
			_, err = rs.Recv()
		}
	}
	wantRefused(t, "replicate from a rogue source", err, codes.Unavailable)

	// 6. The cache's eviction: not on the public port, and on the internal
	// one only for gateways.
	req, _ := http.NewRequest(http.MethodDelete, "http://"+c.cacheHTTP+"/p/"+victim.ID, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("DELETE on the cache's public port: %v %v, want 405", resp, err)
	} else {
		resp.Body.Close()
	}
	if resp, err := http.Get("http://" + c.cacheHTTP + "/metrics"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("/metrics on the cache's public port: %v %v, want 404", resp, err)
	} else {
		resp.Body.Close()
	}
	internal := "https://" + c.cacheIntern
	storeHTTPS := &http.Client{Transport: &http.Transport{TLSClientConfig: store1.Node().ClientTLSExpecting(pki.RoleCache)}}
	req, _ = http.NewRequest(http.MethodDelete, internal+"/p/"+victim.ID, nil)
	if resp, err := storeHTTPS.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("eviction by a store: %v %v, want 403", resp, err)
	} else {
		resp.Body.Close()
	}
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: operator.Node().Roots}}}
	if resp, err := noCert.Get(internal + "/metrics"); err == nil {
		resp.Body.Close()
		t.Errorf("metrics without a client certificate: HTTP %d", resp.StatusCode)
	}
	opHTTPS := &http.Client{Transport: &http.Transport{TLSClientConfig: operator.Node().ClientTLSExpecting(pki.RoleCache)}}
	if resp, err := opHTTPS.Get(internal + "/metrics"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("metrics for an operator: %v %v, want 200", resp, err)
	} else {
		resp.Body.Close()
	}

	// Nothing changed: the victim photo is intact on both stores and
	// through the cache, store0 is still at its own address, and no
	// volume 999 exists.
	for _, s := range c.stores {
		if resp, b := fetch(t, "http://"+s.http+victimPath); resp.StatusCode != http.StatusOK || !bytes.Equal(b, original) {
			t.Errorf("victim photo on %s after the attacks: %d, %d bytes", s.name, resp.StatusCode, len(b))
		}
	}
	if resp, b := fetch(t, victim.URLs["l"]); resp.StatusCode != http.StatusOK || !bytes.Equal(b, original) {
		t.Errorf("victim photo through the cache: %d, %d bytes", resp.StatusCode, len(b))
	}
	resp, b, err := tryFetch("http://" + c.dirHTTP + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Insecure bool `json:"insecure"`
		Stores   []struct {
			ID       string   `json:"id"`
			GRPCAddr string   `json:"grpc_addr"`
			Vids     []uint32 `json:"vids"`
		} `json:"stores"`
	}
	if err := json.Unmarshal(b, &st); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status: %d %v", resp.StatusCode, err)
	}
	if st.Insecure {
		t.Error("the status page says insecure on a TLS cluster")
	}
	for _, s := range st.Stores {
		if s.ID == "store0" && s.GRPCAddr != c.stores[0].grpc {
			t.Errorf("store0 is now at %s", s.GRPCAddr)
		}
		if s.ID == "store1-twin" {
			t.Error("the impersonating heartbeat registered a store")
		}
		for _, v := range s.Vids {
			if v == 999 {
				t.Errorf("volume 999 exists on %s", s.ID)
			}
		}
	}

	// And the cluster still serves: an upload, its images, a delete that
	// evicts it from the cache.
	code, up, body, err := upload(c.gateway, syntheticJPEG(t, 640, 480, 2))
	if err != nil || code != http.StatusCreated {
		// The victim's volume is read-only on store1 now; a new volume
		// takes the writes once the directory sees it.
		eventually(t, 30*time.Second, "an upload after the attacks", func() error {
			code, up, body, err = upload(c.gateway, syntheticJPEG(t, 640, 480, 2))
			if err != nil {
				return err
			}
			if code != http.StatusCreated {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})
	}
	if resp, b := fetch(t, up.URLs["m"]); resp.StatusCode != http.StatusOK || len(b) != up.Sizes["m"].Bytes {
		t.Errorf("new photo through the cache: %d, %d bytes", resp.StatusCode, len(b))
	}
	req, _ = http.NewRequest(http.MethodDelete, c.gateway+"/photos/"+up.ID, nil)
	dresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	dbody, _ := io.ReadAll(dresp.Body)
	dresp.Body.Close()
	if dresp.StatusCode != http.StatusOK || !strings.Contains(string(dbody), `"cache_evicted":true`) {
		t.Errorf("delete through the gateway: %d %s", dresp.StatusCode, dbody)
	}
	if resp, _ := fetch(t, up.URLs["m"]); resp.StatusCode != http.StatusNotFound {
		t.Errorf("deleted photo through the cache: %d, want 404", resp.StatusCode)
	}
}
