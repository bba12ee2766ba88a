package directory_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/directory"
	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store"
)

var (
	bg           = context.Background()
	secret       = []byte("the cluster secret of the cluster test")
	beat         = 100 * time.Millisecond
	quiet        = slog.New(slog.DiscardHandler)
	httpClient   = &http.Client{Timeout: 10 * time.Second}
	writableView = storepb.VolumeState_VOLUME_STATE_WRITABLE
)

// clusterStore is a real store with its heartbeater.
type clusterStore struct {
	dir    string
	srv    *store.Server
	hb     *store.Heartbeater
	cancel context.CancelFunc
	done   chan struct{}
}

func startStore(t *testing.T, dirAddr, dataDir, rack string) *clusterStore {
	t.Helper()
	signer, err := token.NewSigner(secret)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(bg, store.Options{Dir: dataDir, VolumeSizeLimit: 8 << 20, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	cs := &clusterStore{dir: dataDir, done: make(chan struct{})}
	srv, err := store.NewServer(st, store.ServerOptions{
		HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", Logger: quiet, Authorizer: signer,
		OnCorrupt: func(vid uint32, key uint64, size needle.SizeCode, err error) {
			cs.hb.ReportCorrupt(vid, key, size, err)
		},
	})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	cs.srv = srv
	cs.hb, err = store.NewHeartbeater(st, store.HeartbeaterOptions{
		DirectoryAddr: dirAddr, GRPCAddr: srv.GRPCAddr().String(), HTTPAddr: srv.HTTPAddr().String(),
		Rack: rack, Interval: beat, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	cs.cancel = cancel
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ctx) }()
	hbDone := make(chan error, 1)
	go func() { hbDone <- cs.hb.Run(ctx) }()
	go func() {
		if err := <-hbDone; err != nil {
			t.Errorf("heartbeater: %v", err)
		}
		if err := <-serveDone; err != nil {
			t.Errorf("store Serve: %v", err)
		}
		close(cs.done)
	}()
	t.Cleanup(cs.stop)
	return cs
}

func (cs *clusterStore) stop() {
	cs.cancel()
	<-cs.done
}

func storeClient(t *testing.T, addr string) storepb.StoreClient {
	t.Helper()
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return storepb.NewStoreClient(c)
}

func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := httpClient.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// TestCluster runs a directory and three stores (replication 2) on
// 127.0.0.1: an assignment is written to every replica and read back from
// each store, writes without a valid token are refused, and a stopped
// store's volumes turn read-only, are avoided, and come back.
func TestCluster(t *testing.T) {
	dir, err := directory.NewServer(directory.Options{
		Dir: t.TempDir(), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Replication: 2,
		VolumeSizeLimit: 8 << 20, HeartbeatInterval: beat, Secret: secret, MinWritable: 1, MinStoreFreeBytes: 1, Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	dirDone := make(chan error, 1)
	go func() { dirDone <- dir.Serve(bg) }()
	defer func() {
		if err := dir.Shutdown(bg); err != nil {
			t.Error(err)
		}
		if err := <-dirDone; err != nil {
			t.Error(err)
		}
	}()
	conn, err := grpc.NewClient(dir.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dc := directorypb.NewDirectoryClient(conn)

	base := t.TempDir()
	stores := map[string]*clusterStore{}
	for i, rack := range []string{"r1", "r2", "r3"} {
		cs := startStore(t, dir.GRPCAddr().String(), filepath.Join(base, fmt.Sprint(i)), rack)
		stores[cs.hb.StoreID()] = cs
	}
	waitFor(t, "three stores registered", func() error {
		resp, err := dc.ListStores(bg, &directorypb.ListStoresRequest{})
		if err != nil {
			return err
		}
		alive := 0
		for _, s := range resp.GetStores() {
			if s.GetState() == directorypb.StoreState_STORE_STATE_ALIVE {
				alive++
			}
		}
		if alive != 3 {
			return fmt.Errorf("%d of 3 alive", alive)
		}
		return nil
	})

	// Assign and write the four sizes of one photo to every replica.
	var as *directorypb.AssignResponse
	waitFor(t, "assign", func() (err error) {
		as, err = dc.Assign(bg, &directorypb.AssignRequest{Count: 2})
		return err
	})
	if len(as.GetReplicas()) != 2 {
		t.Fatalf("assignment with %d replicas, want 2", len(as.GetReplicas()))
	}
	id := needle.PhotoID{Vid: as.GetVid(), Key: as.GetKeyStart(), Cookie: 0x8c3e77d2a1b0c4f5}
	data := map[needle.SizeCode][]byte{}
	var batch []*storepb.Needle
	for _, size := range needle.PhotoSizes {
		data[size] = bytes.Repeat([]byte{byte(size) + 'a'}, 1000+int(size))
		batch = append(batch, &storepb.Needle{Key: id.Key, Cookie: id.Cookie, SizeCode: uint32(size), ContentType: uint32(needle.TypeJPEG), Data: data[size]})
	}
	for _, r := range as.GetReplicas() {
		if _, err := storeClient(t, r.GetGrpcAddr()).Write(bg, &storepb.WriteRequest{Vid: id.Vid, Needles: batch, WriteToken: as.GetWriteToken()}); err != nil {
			t.Fatalf("write to store %s: %v", r.GetStoreId(), err)
		}
	}

	// Writes with a bad token are refused by the store.
	signer, _ := token.NewSigner(secret)
	forger, _ := token.NewSigner([]byte("not the cluster secret at all"))
	exp := time.Now().Add(time.Minute)
	sign := func(s *token.Signer, c token.Claims) string {
		tok, err := s.Sign(c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	other := needle.PhotoID{Vid: id.Vid, Key: as.GetKeyStart() + 1, Cookie: 1}
	one := []*storepb.Needle{{Key: other.Key, Cookie: other.Cookie, SizeCode: 0, ContentType: 1, Data: []byte("x")}}
	rc := storeClient(t, as.GetReplicas()[0].GetGrpcAddr())
	for name, tok := range map[string]string{
		"missing":   "",
		"forged":    sign(forger, token.Claims{Vid: id.Vid, KeyStart: other.Key, KeyCount: 1, Expiry: exp}),
		"expired":   sign(signer, token.Claims{Vid: id.Vid, KeyStart: other.Key, KeyCount: 1, Expiry: time.Now().Add(-time.Hour)}),
		"wrong vid": sign(signer, token.Claims{Vid: id.Vid + 1, KeyStart: other.Key, KeyCount: 1, Expiry: exp}),
		"range":     sign(signer, token.Claims{Vid: id.Vid, KeyStart: other.Key + 1, KeyCount: 5, Expiry: exp}),
	} {
		_, err := rc.Write(bg, &storepb.WriteRequest{Vid: id.Vid, Needles: one, WriteToken: tok})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("write with a %s token: %v, want Unauthenticated", name, err)
		}
	}
	if _, err := rc.Read(bg, &storepb.ReadRequest{Vid: id.Vid, Key: other.Key, Cookie: other.Cookie}); status.Code(err) != codes.NotFound {
		t.Fatalf("a refused write is readable: %v", err)
	}

	// Read every size back from each replica over HTTP.
	for _, r := range as.GetReplicas() {
		for _, size := range needle.PhotoSizes {
			code, body := get(t, "http://"+r.GetHttpAddr()+needle.ImagePath(id, size, "jpg"))
			if code != 200 || !bytes.Equal(body, data[size]) {
				t.Fatalf("store %s, size %v: %d, %d bytes", r.GetStoreId(), size, code, len(body))
			}
		}
	}
	urls, err := dc.PhotoURLs(bg, &directorypb.PhotoURLsRequest{PhotoId: id.String()})
	if err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, urls.GetUrls()["m"]); code != 200 || !bytes.Equal(body, data[needle.SizeMedium]) {
		t.Fatalf("GET %s: %d", urls.GetUrls()["m"], code)
	}

	// Stop one replica's store.
	downID := as.GetReplicas()[0].GetStoreId()
	down := stores[downID]
	down.stop()
	waitFor(t, "volume read-only with a replica down", func() error {
		lk, err := dc.Lookup(bg, &directorypb.LookupRequest{Vid: id.Vid})
		if err != nil {
			return err
		}
		if lk.GetState() == writableView {
			return fmt.Errorf("volume %d still writable", id.Vid)
		}
		if last := lk.GetReplicas()[len(lk.GetReplicas())-1]; last.GetStoreId() != downID {
			return fmt.Errorf("dead store %s not listed last: %v", downID, lk.GetReplicas())
		}
		return nil
	})
	for range 5 {
		// Retried while no volume is writable: a loaded machine can delay
		// a heartbeat past the liveness limit.
		var a *directorypb.AssignResponse
		waitFor(t, "assign", func() (err error) {
			a, err = dc.Assign(bg, &directorypb.AssignRequest{Count: 1})
			return err
		})
		for _, r := range a.GetReplicas() {
			if r.GetStoreId() == downID {
				t.Fatalf("volume %d assigned with stopped store %s", a.GetVid(), downID)
			}
		}
	}
	lk, err := dc.Lookup(bg, &directorypb.LookupRequest{Vid: id.Vid})
	if err != nil {
		t.Fatal(err)
	}
	live := lk.GetReplicas()[0]
	if code, body := get(t, "http://"+live.GetHttpAddr()+needle.ImagePath(id, needle.SizeLarge, "jpg")); code != 200 || !bytes.Equal(body, data[needle.SizeLarge]) {
		t.Fatalf("read from the live replica %s: %d", live.GetStoreId(), code)
	}

	// It comes back (on new ports) and its volume is writable again.
	back := startStore(t, dir.GRPCAddr().String(), down.dir, "r-back")
	if back.hb.StoreID() != downID {
		t.Fatalf("restarted store has id %s, want %s", back.hb.StoreID(), downID)
	}
	waitFor(t, "volume writable after the store returned", func() error {
		lk, err := dc.Lookup(bg, &directorypb.LookupRequest{Vid: id.Vid})
		if err != nil {
			return err
		}
		if lk.GetState() != writableView {
			return fmt.Errorf("volume %d is %v", id.Vid, lk.GetState())
		}
		return nil
	})
	lk, err = dc.Lookup(bg, &directorypb.LookupRequest{Vid: id.Vid})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range lk.GetReplicas() {
		if r.GetStoreId() == downID {
			if r.GetHttpAddr() != back.srv.HTTPAddr().String() {
				t.Fatalf("returned store's address %s, want %s", r.GetHttpAddr(), back.srv.HTTPAddr())
			}
			if code, _ := get(t, "http://"+r.GetHttpAddr()+needle.ImagePath(id, needle.SizeThumb, "jpg")); code != 200 {
				t.Fatalf("read from the returned store: %d", code)
			}
		}
	}
}
