package directory

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
)

var bg = context.Background()

func wantCode(t *testing.T, err error, code codes.Code, substr string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("error %v, want code %v", err, code)
	}
	if !strings.Contains(status.Convert(err).Message(), substr) {
		t.Fatalf("error %q does not say %q", status.Convert(err).Message(), substr)
	}
}

func TestAssignShortfall(t *testing.T) {
	s := startDirectory(t, Options{Replication: 3})
	c := dirClient(t, s)
	startFakeStore(t, s, "only", "")
	waitAlive(t, c, 1)
	_, err := c.Assign(bg, &directorypb.AssignRequest{Count: 1})
	wantCode(t, err, codes.Unavailable, "need 3 live stores for replication 3, have 1")
}

func TestAssign(t *testing.T) {
	s := startDirectory(t, Options{Replication: 3})
	c := dirClient(t, s)
	stores := []*fakeStore{startFakeStore(t, s, "a", "r1"), startFakeStore(t, s, "b", "r2"), startFakeStore(t, s, "c", "r3")}
	waitAlive(t, c, 3)
	resp, err := c.Assign(bg, &directorypb.AssignRequest{Count: 4})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetKeyStart() == 0 || resp.GetKeyCount() != 4 || resp.GetVid() == 0 {
		t.Fatalf("assignment %v", resp)
	}
	var ids []string
	for _, r := range resp.GetReplicas() {
		ids = append(ids, r.GetStoreId())
		if r.GetGrpcAddr() == "" || r.GetHttpAddr() == "" {
			t.Fatalf("replica without addresses: %v", r)
		}
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"a", "b", "c"}) {
		t.Fatalf("replicas %v", ids)
	}
	for _, f := range stores {
		if _, ok := f.volume(resp.GetVid()); !ok {
			t.Fatalf("store %s was not asked to create volume %d", f.id, resp.GetVid())
		}
	}
	// Every replica got the same needle secret, so they stay identical.
	first := stores[0].secret(resp.GetVid())
	if len(first) != 8 || bytes.Equal(first, make([]byte, 8)) {
		t.Fatalf("volume secret %x", first)
	}
	for _, f := range stores[1:] {
		if got := f.secret(resp.GetVid()); !bytes.Equal(got, first) {
			t.Fatalf("store %s got secret %x, store a %x", f.id, got, first)
		}
	}
	signer, err := token.NewSigner(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	tok := resp.GetWriteToken()
	if err := signer.Verify(tok, resp.GetVid(), resp.GetKeyStart()+3); err != nil {
		t.Fatalf("token does not cover the last key: %v", err)
	}
	if err := signer.Verify(tok, resp.GetVid(), resp.GetKeyStart()+4); err == nil {
		t.Fatal("token covers a key beyond the range")
	}
	if err := signer.Verify(tok, resp.GetVid()+1, resp.GetKeyStart()); err == nil {
		t.Fatal("token covers another volume")
	}
	next, err := c.Assign(bg, &directorypb.AssignRequest{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	if next.GetKeyStart() < resp.GetKeyStart()+4 {
		t.Fatalf("second assignment starts at %d, inside the first", next.GetKeyStart())
	}
}

func TestBadRequests(t *testing.T) {
	s := startDirectory(t, Options{Replication: 1, MaxAssignCount: 100})
	c := dirClient(t, s)
	_, err := c.Assign(bg, &directorypb.AssignRequest{Count: 0})
	wantCode(t, err, codes.InvalidArgument, "count")
	_, err = c.Assign(bg, &directorypb.AssignRequest{Count: 1 << 31})
	wantCode(t, err, codes.InvalidArgument, "maximum of 100")
	_, err = c.Lookup(bg, &directorypb.LookupRequest{Vid: 42})
	wantCode(t, err, codes.NotFound, "volume 42")
	_, err = c.Lookup(bg, &directorypb.LookupRequest{Vid: 0})
	wantCode(t, err, codes.InvalidArgument, "vid 0")
	_, err = c.MarkReadOnly(bg, &directorypb.DirectoryMarkReadOnlyRequest{Vid: 42})
	wantCode(t, err, codes.NotFound, "volume 42")
	for _, id := range []string{"", "x", "7-0-0000000000000000", "7-1f-XYZ", strings.Repeat("9", 1000)} {
		_, err = c.PhotoURLs(bg, &directorypb.PhotoURLsRequest{PhotoId: id})
		wantCode(t, err, codes.InvalidArgument, "malformed")
	}
	_, err = c.PhotoURLs(bg, &directorypb.PhotoURLsRequest{PhotoId: "42-1f-0123456789abcdef"})
	wantCode(t, err, codes.NotFound, "volume 42")

	// A heartbeat from a store without a usable id ends the stream.
	stream, err := c.Heartbeat(bg)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&directorypb.HeartbeatRequest{StoreId: "has space", GrpcAddr: "x:1", HttpAddr: "x:2"}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.InvalidArgument, "store id")
}

func TestConcurrentAssignNoDuplicates(t *testing.T) {
	s := startDirectory(t, Options{Replication: 2, KeyBlock: 64, MinWritable: 3})
	c := dirClient(t, s)
	startFakeStore(t, s, "a", "")
	startFakeStore(t, s, "b", "")
	startFakeStore(t, s, "c", "")
	waitAlive(t, c, 3)
	const workers, per = 24, 40
	var mu sync.Mutex
	seen := map[uint64]bool{}
	vids := map[uint32]bool{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range per {
				resp, err := c.Assign(bg, &directorypb.AssignRequest{Count: uint32(1 + i%4)})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				vids[resp.GetVid()] = true
				for k := resp.GetKeyStart(); k < resp.GetKeyStart()+uint64(resp.GetKeyCount()); k++ {
					if seen[k] {
						t.Errorf("key %d assigned twice", k)
					}
					seen[k] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != workers*per*10/4 {
		t.Fatalf("%d distinct keys, want %d", len(seen), workers*per*10/4)
	}
	t.Logf("%d keys over %d volumes", len(seen), len(vids))
}

func TestRestartKeepsVolumesAndKeys(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, Replication: 1}
	s := startDirectory(t, opts)
	c := dirClient(t, s)
	f := startFakeStore(t, s, "a", "")
	waitAlive(t, c, 1)
	first, err := c.Assign(bg, &directorypb.AssignRequest{Count: 5})
	if err != nil {
		t.Fatal(err)
	}
	f.stop()
	if err := s.Shutdown(bg); err != nil {
		t.Fatal(err)
	}

	s2 := startDirectory(t, opts)
	c2 := dirClient(t, s2)
	lk, err := c2.Lookup(bg, &directorypb.LookupRequest{Vid: first.GetVid()})
	if err != nil {
		t.Fatalf("volume %d lost over a restart: %v", first.GetVid(), err)
	}
	if len(lk.GetReplicas()) != 1 || lk.GetReplicas()[0].GetStoreId() != "a" {
		t.Fatalf("replicas after restart: %v", lk.GetReplicas())
	}
	stores, err := c2.ListStores(bg, &directorypb.ListStoresRequest{})
	if err != nil || len(stores.GetStores()) != 1 || stores.GetStores()[0].GetId() != "a" {
		t.Fatalf("stores after restart: %v %v", stores, err)
	}
	// The store is back: keys go on above the first run's.
	g := startFakeStore(t, s2, "a", "")
	g.mu.Lock()
	g.vols = f.vols
	g.mu.Unlock()
	waitAlive(t, c2, 1)
	next, err := c2.Assign(bg, &directorypb.AssignRequest{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	if next.GetKeyStart() < first.GetKeyStart()+5 {
		t.Fatalf("key %d reissued after a restart (first run got %d..%d)", next.GetKeyStart(), first.GetKeyStart(), first.GetKeyStart()+4)
	}
}

func volumeView(t *testing.T, c directorypb.DirectoryClient, vid uint32) *directorypb.VolumeView {
	t.Helper()
	resp, err := c.ListVolumes(bg, &directorypb.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range resp.GetVolumes() {
		if v.GetVid() == vid {
			return v
		}
	}
	t.Fatalf("volume %d not listed", vid)
	return nil
}

func TestDeadStore(t *testing.T) {
	s := startDirectory(t, Options{Replication: 2, MinWritable: 1, HeartbeatInterval: 2 * testInterval})
	c := dirClient(t, s)
	a := startFakeStore(t, s, "a", "")
	startFakeStore(t, s, "b", "")
	waitAlive(t, c, 2)
	vid := assignRetry(t, c).GetVid()
	startFakeStore(t, s, "c", "")
	waitAlive(t, c, 3)

	// a stops heartbeating: volumes on a turn read-only, Lookup lists it
	// last, and Assign goes to volumes without it.
	a.paused.Store(true)
	waitFor(t, "volume read-only while store a is dead", func() error {
		v := volumeView(t, c, vid)
		if v.GetState() != pbReadOnly || !strings.Contains(v.GetReadOnlyReason(), "store a") {
			return fmt.Errorf("volume %d: %v %q", vid, v.GetState(), v.GetReadOnlyReason())
		}
		return nil
	})
	lk, err := c.Lookup(bg, &directorypb.LookupRequest{Vid: vid})
	if err != nil {
		t.Fatal(err)
	}
	if reps := lk.GetReplicas(); len(reps) != 2 || reps[1].GetStoreId() != "a" {
		t.Fatalf("Lookup while a is dead: %v", reps)
	}
	for range 10 {
		resp := assignRetry(t, c)
		for _, r := range resp.GetReplicas() {
			if r.GetStoreId() == "a" {
				t.Fatalf("assignment to volume %d on dead store a", resp.GetVid())
			}
		}
	}

	// a returns: its volume is writable again.
	a.paused.Store(false)
	waitFor(t, "volume writable after store a returned", func() error {
		if v := volumeView(t, c, vid); v.GetState() != pbWritable {
			return fmt.Errorf("volume %d: %v %q", vid, v.GetState(), v.GetReadOnlyReason())
		}
		return nil
	})
}

func TestSizeLimitAndMarkReadOnly(t *testing.T) {
	s := startDirectory(t, Options{Replication: 2, VolumeSizeLimit: 1 << 20, PersistInterval: 1 << 40})
	c := dirClient(t, s)
	a, b := startFakeStore(t, s, "a", ""), startFakeStore(t, s, "b", "")
	waitAlive(t, c, 2)
	resp, err := c.Assign(bg, &directorypb.AssignRequest{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	vid := resp.GetVid()

	// One replica reaches the limit: the volume turns read-only and both
	// replicas are told.
	a.setSize(vid, 1<<20)
	waitFor(t, "full volume read-only on every replica", func() error {
		for _, f := range []*fakeStore{a, b} {
			if v, _ := f.volume(vid); v.GetState() != pbReadOnly {
				return fmt.Errorf("store %s still has volume %d %v", f.id, vid, v.GetState())
			}
		}
		if v := volumeView(t, c, vid); v.GetState() != pbReadOnly || v.GetReadOnlyReason() != "full" {
			return fmt.Errorf("view %v %q", v.GetState(), v.GetReadOnlyReason())
		}
		return nil
	})

	// An operator marks the next volume read-only.
	resp, err = c.Assign(bg, &directorypb.AssignRequest{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVid() == vid {
		t.Fatalf("assignment to full volume %d", vid)
	}
	mr, err := c.MarkReadOnly(bg, &directorypb.DirectoryMarkReadOnlyRequest{Vid: resp.GetVid(), Reason: "disk swap"})
	if err != nil {
		t.Fatal(err)
	}
	if mr.GetVolume().GetState() != pbReadOnly || !strings.Contains(mr.GetVolume().GetReadOnlyReason(), "disk swap") {
		t.Fatalf("MarkReadOnly answered %v", mr.GetVolume())
	}
	for _, f := range []*fakeStore{a, b} {
		if v, _ := f.volume(resp.GetVid()); v.GetState() != pbReadOnly {
			t.Fatalf("store %s was not told: %v", f.id, v.GetState())
		}
	}
}

func TestPlacementDistinctRacks(t *testing.T) {
	s := startDirectory(t, Options{Replication: 2, MinWritable: 1})
	c := dirClient(t, s)
	racks := map[string]string{"a1": "r1", "a2": "r1", "b1": "r2", "b2": "r2"}
	for id, rack := range racks {
		startFakeStore(t, s, id, rack)
	}
	waitAlive(t, c, 4)
	for range 5 {
		if err := s.d.allocateVolume(bg); err != nil {
			t.Fatal(err)
		}
	}
	vols, err := c.ListVolumes(bg, &directorypb.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(vols.GetVolumes()) != 5 {
		t.Fatalf("%d volumes, want 5", len(vols.GetVolumes()))
	}
	for _, v := range vols.GetVolumes() {
		ids := v.GetReplicaStoreIds()
		if len(ids) != 2 || racks[ids[0]] == racks[ids[1]] {
			t.Fatalf("volume %d on %v: not on distinct racks", v.GetVid(), ids)
		}
	}
}

func TestPhotoURLs(t *testing.T) {
	id := needle.PhotoID{Vid: 1, Key: 0x1f4a9, Cookie: 0x8c3e77d2a1b0c4f5}
	check := func(t *testing.T, c directorypb.DirectoryClient, wantBase string) {
		t.Helper()
		resp, err := c.PhotoURLs(bg, &directorypb.PhotoURLsRequest{PhotoId: id.String()})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetUrls()) != 4 {
			t.Fatalf("urls %v", resp.GetUrls())
		}
		for _, letter := range []string{"t", "s", "m", "l"} {
			want := wantBase + "/p/" + id.String() + "/" + letter + ".jpg"
			if got := resp.GetUrls()[letter]; got != want {
				t.Fatalf("url %s = %q, want %q", letter, got, want)
			}
		}
	}
	setup := func(t *testing.T, opts Options) directorypb.DirectoryClient {
		opts.Replication = 1
		s := startDirectory(t, opts)
		c := dirClient(t, s)
		startFakeStore(t, s, "a", "")
		waitAlive(t, c, 1)
		if resp, err := c.Assign(bg, &directorypb.AssignRequest{Count: 1}); err != nil || resp.GetVid() != 1 {
			t.Fatalf("assign: %v %v", resp, err)
		}
		return c
	}
	t.Run("cdn", func(t *testing.T) {
		check(t, setup(t, Options{CDNURL: "https://cdn.example.com/"}), "https://cdn.example.com")
	})
	t.Run("cache", func(t *testing.T) {
		nodes := []string{"cache1:8080", "https://cache2.example.com", "cache3:8080"}
		owner := nodes[needle.Owner(id.Key, nodes)]
		if !strings.Contains(owner, "://") {
			owner = "http://" + owner
		}
		check(t, setup(t, Options{CacheNodes: nodes}), owner)
	})
	t.Run("store", func(t *testing.T) {
		check(t, setup(t, Options{}), "http://http-a:8080")
	})
}

func TestHTTP(t *testing.T) {
	s := startDirectory(t, Options{Replication: 1})
	c := dirClient(t, s)
	startFakeStore(t, s, "store-<a>", "")
	waitAlive(t, c, 1)
	if _, err := c.Assign(bg, &directorypb.AssignRequest{Count: 1}); err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string, string) {
		resp, err := http.Get("http://" + s.HTTPAddr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	code, ctype, body := get("/")
	if code != 200 || !strings.HasPrefix(ctype, "text/html") || !strings.Contains(body, "store-&lt;a&gt;") || !strings.Contains(body, "writable") {
		t.Fatalf("GET / = %d %s\n%s", code, ctype, body)
	}
	code, _, body = get("/api/v1/status")
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil || code != 200 {
		t.Fatalf("GET /api/v1/status = %d %v\n%s", code, err, body)
	}
	if len(st.Stores) != 1 || st.Stores[0].State != "alive" || len(st.Volumes) != 1 || st.Volumes[0].State != "writable" || st.HighWater == 0 {
		t.Fatalf("status %+v", st)
	}
	code, _, body = get("/metrics")
	if code != 200 || !strings.Contains(body, `haybale_directory_stores{state="alive"} 1`) || !strings.Contains(body, "haybale_directory_heartbeats_total") {
		t.Fatalf("GET /metrics = %d\n%s", code, body)
	}
	if code, _, body = get("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("GET /healthz = %d %q", code, body)
	}
	if code, _, _ = get("/nope"); code != 404 {
		t.Fatalf("GET /nope = %d", code)
	}
}

func TestNewServerValidates(t *testing.T) {
	if _, err := NewServer(Options{}); err == nil {
		t.Fatal("NewServer without a directory succeeded")
	}
	if _, err := NewServer(Options{Dir: t.TempDir(), VolumeSizeLimit: 1 << 40}); err == nil {
		t.Fatal("NewServer with a 1 TiB volume limit succeeded")
	}
}

// assignRetry assigns one key, retrying while no volume is writable (a
// loaded machine can delay a heartbeat past the liveness limit).
func assignRetry(t *testing.T, c directorypb.DirectoryClient) *directorypb.AssignResponse {
	t.Helper()
	var resp *directorypb.AssignResponse
	waitFor(t, "assign", func() (err error) {
		resp, err = c.Assign(bg, &directorypb.AssignRequest{Count: 1})
		return err
	})
	return resp
}

func TestAuthorizeDelete(t *testing.T) {
	s := startDirectory(t, Options{Replication: 1})
	c := dirClient(t, s)
	startFakeStore(t, s, "a", "r1")
	waitAlive(t, c, 1)
	a, err := c.Assign(bg, &directorypb.AssignRequest{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	id := needle.PhotoID{Vid: a.GetVid(), Key: a.GetKeyStart(), Cookie: 42}
	resp, err := c.AuthorizeDelete(bg, &directorypb.AuthorizeDeleteRequest{PhotoId: id.String()})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVid() != id.Vid || len(resp.GetReplicas()) != 1 || resp.GetReplicas()[0].GetStoreId() != "a" {
		t.Fatalf("response %v", resp)
	}
	signer, _ := token.NewSigner(testSecret)
	if err := signer.AuthorizeDelete(resp.GetWriteToken(), id.Vid, id.Key, id.Cookie); err != nil {
		t.Fatalf("delete token does not cover the photo: %v", err)
	}
	if err := signer.AuthorizeDelete(resp.GetWriteToken(), id.Vid, id.Key+1, id.Cookie); err == nil {
		t.Fatal("delete token covers another key")
	}
	if err := signer.AuthorizeDelete(resp.GetWriteToken(), id.Vid, id.Key, id.Cookie+1); err == nil {
		t.Fatal("delete token covers another cookie")
	}
	if err := signer.Verify(resp.GetWriteToken(), id.Vid, id.Key); err == nil {
		t.Fatal("delete token allows a write")
	}
	_, err = c.AuthorizeDelete(bg, &directorypb.AuthorizeDeleteRequest{PhotoId: "garbage"})
	wantCode(t, err, codes.InvalidArgument, "malformed")
	_, err = c.AuthorizeDelete(bg, &directorypb.AuthorizeDeleteRequest{PhotoId: needle.PhotoID{Vid: 999, Key: 1}.String()})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("unknown volume: %v", err)
	}
	// Stores keep tombstones of keys they do not hold yet: a delete token
	// for a key never handed out would delete a future upload.
	future := needle.PhotoID{Vid: a.GetVid(), Key: a.GetKeyStart() + 1<<40, Cookie: 42}
	_, err = c.AuthorizeDelete(bg, &directorypb.AuthorizeDeleteRequest{PhotoId: future.String()})
	wantCode(t, err, codes.InvalidArgument, "never assigned")
}
