package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// testServer is a Server running on 127.0.0.1:0 with an HTTP and a gRPC
// client pointed at it.
type testServer struct {
	srv    *Server
	base   string // http://127.0.0.1:port
	client storepb.StoreClient
	http   *http.Client
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startServer opens a store with so and serves it with sv (addresses and
// logger filled in). The server is shut down when the test ends.
func startServer(t testing.TB, so Options, sv ServerOptions) *testServer {
	t.Helper()
	if so.Logger == nil {
		so.Logger = quietLogger()
	}
	st, err := Open(context.Background(), so)
	if err != nil {
		t.Fatal(err)
	}
	sv.HTTPAddr, sv.GRPCAddr = "127.0.0.1:0", "127.0.0.1:0"
	if sv.Authorizer == nil {
		sv.Authorizer = allowAll{}
	}
	if sv.Logger == nil {
		sv.Logger = quietLogger()
	}
	srv, err := NewServer(st, sv)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{
		srv:    srv,
		base:   "http://" + srv.HTTPAddr().String(),
		http:   &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second},
		cancel: cancel,
		done:   make(chan error, 1),
	}
	go func() { ts.done <- srv.Serve(ctx) }()
	conn, err := rpc.Dial(rpc.Insecure(), srv.GRPCAddr().String(), nil,
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize*2), grpc.MaxCallSendMsgSize(MaxMessageSize*2)))
	if err != nil {
		t.Fatal(err)
	}
	ts.client = storepb.NewStoreClient(conn)
	t.Cleanup(func() {
		conn.Close()
		ts.stop(t)
	})
	return ts
}

// stop shuts the server down as SIGTERM does and waits for Serve.
func (ts *testServer) stop(t testing.TB) {
	t.Helper()
	ts.once.Do(func() {
		ts.cancel()
		if err := <-ts.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		ts.http.CloseIdleConnections()
	})
}

// get performs a request and returns the response with its body read.
func (ts *testServer) do(t testing.TB, method, path string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, ts.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, body
}

// photo is one written photo: its ID and the bytes of each size.
type photo struct {
	id    needle.PhotoID
	data  [4][]byte
	ctype needle.ContentType
	sums  [4]uint64
	offs  [4]int64
}

func (p *photo) path(size needle.SizeCode) string { return needle.ImagePath(p.id, size, "") }

// randomPhoto makes a photo of four sizes whose data sizes are base,
// 2*base, 4*base and 8*base bytes.
func randomPhoto(r *rand.Rand, vid uint32, key uint64, base int) *photo {
	p := &photo{id: needle.PhotoID{Vid: vid, Key: key, Cookie: r.Uint64()}, ctype: needle.TypeJPEG}
	for i := range p.data {
		p.data[i] = make([]byte, base<<i)
		for j := range p.data[i] {
			p.data[i][j] = byte(r.Uint32())
		}
	}
	return p
}

// writeRandomPhotos writes n random photos into volume vid, photo k
// (1..n) under key keyBase+k with base size sizeBase+k*sizeStep (see
// randomPhoto), and returns them in key order.
func (ts *testServer) writeRandomPhotos(t testing.TB, r *rand.Rand, vid uint32, n int, keyBase uint64, sizeBase, sizeStep int) []*photo {
	t.Helper()
	var photos []*photo
	for k := 1; k <= n; k++ {
		p := randomPhoto(r, vid, keyBase+uint64(k), sizeBase+k*sizeStep)
		ts.writePhoto(t, p)
		photos = append(photos, p)
	}
	return photos
}

// writePhoto writes the four sizes of p in one Write.
func (ts *testServer) writePhoto(t testing.TB, p *photo) {
	t.Helper()
	if err := ts.tryWritePhoto(p); err != nil {
		t.Fatal(err)
	}
}

// tryWritePhoto writes the four sizes of p in one Write and records the
// checksums and offsets; it may be called from any goroutine.
func (ts *testServer) tryWritePhoto(p *photo) error {
	req := &storepb.WriteRequest{Vid: p.id.Vid}
	for i, d := range p.data {
		req.Needles = append(req.Needles, &storepb.Needle{
			Key: p.id.Key, Cookie: p.id.Cookie, SizeCode: uint32(i), ContentType: uint32(p.ctype), Data: d,
		})
	}
	resp, err := ts.client.Write(context.Background(), req)
	if err != nil {
		return fmt.Errorf("Write %v: %w", p.id, err)
	}
	if len(resp.Results) != 4 {
		return fmt.Errorf("Write: %d results, want 4", len(resp.Results))
	}
	for i, r := range resp.Results {
		if r.Key != p.id.Key || r.SizeCode != uint32(i) || r.Offset%8 != 0 || r.Checksum == 0 {
			return fmt.Errorf("Write result %d: %+v", i, r)
		}
		p.sums[i] = r.Checksum
		p.offs[i] = int64(r.Offset)
	}
	return nil
}

func (ts *testServer) allocate(t testing.TB, vid uint32) {
	t.Helper()
	if _, err := ts.client.AllocateVolume(context.Background(), &storepb.AllocateVolumeRequest{Vid: vid}); err != nil {
		t.Fatalf("AllocateVolume %d: %v", vid, err)
	}
}

// wantCode fails the test unless err is a gRPC status with code want.
func wantCode(t testing.TB, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("%s: got %v (%v), want %v", what, got, err, want)
	}
}

func TestGRPCRoundTripAndRestart(t *testing.T) {
	dir := t.TempDir()
	so := Options{Dir: dir, FS: vfs.Default}
	ts := startServer(t, so, ServerOptions{})
	ts.allocate(t, 3)
	r := rand.New(rand.NewPCG(1, 2))
	var photos []*photo
	for key := uint64(1); key <= 5; key++ {
		p := randomPhoto(r, 3, key, 1000)
		ts.writePhoto(t, p)
		photos = append(photos, p)
	}
	check := func(ts *testServer, p *photo, size needle.SizeCode, want int) {
		t.Helper()
		resp, body := ts.do(t, http.MethodGet, p.path(size), nil)
		if resp.StatusCode != want {
			t.Fatalf("GET %s: %d, want %d", p.path(size), resp.StatusCode, want)
		}
		if want == http.StatusOK && !bytes.Equal(body, p.data[size]) {
			t.Fatalf("GET %s: body differs", p.path(size))
		}
	}
	for _, p := range photos {
		for _, s := range needle.PhotoSizes {
			check(ts, p, s, http.StatusOK)
		}
	}
	// gRPC Read returns the same verified needle.
	rr, err := ts.client.Read(context.Background(), &storepb.ReadRequest{Vid: 3, Key: 2, Cookie: photos[1].id.Cookie, SizeCode: 2, IncludeRaw: true})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rr.Needle.Data, photos[1].data[2]) || rr.Needle.Checksum != photos[1].sums[2] || int64(rr.Offset) != photos[1].offs[2] {
		t.Fatalf("Read: checksum %x offset %d, want %x %d", rr.Needle.Checksum, rr.Offset, photos[1].sums[2], photos[1].offs[2])
	}
	v3, err := ts.srv.store.Volume(3)
	if err != nil {
		t.Fatal(err)
	}
	sb := v3.Superblock()
	format, err := sb.Format()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := format.Decode(rr.Raw); err != nil || n.Checksum != rr.Needle.Checksum {
		t.Fatalf("Read raw: %v", err)
	}

	// Delete photo 1 whole and size m of photo 2.
	del, err := ts.client.Delete(context.Background(), &storepb.DeleteRequest{Vid: 3, Key: 1, Cookie: photos[0].id.Cookie, SizeCode: uint32(needle.SizeAll)})
	if err != nil || del.DeletedCount != 4 || del.FreedBytes == 0 {
		t.Fatalf("Delete all: %+v %v", del, err)
	}
	del, err = ts.client.Delete(context.Background(), &storepb.DeleteRequest{Vid: 3, Key: 2, Cookie: photos[1].id.Cookie, SizeCode: 2})
	if err != nil || del.DeletedCount != 1 {
		t.Fatalf("Delete m: %+v %v", del, err)
	}
	// Deleting again, or with a wrong cookie, removes nothing.
	del, err = ts.client.Delete(context.Background(), &storepb.DeleteRequest{Vid: 3, Key: 2, Cookie: photos[1].id.Cookie, SizeCode: 2})
	if err != nil || del.DeletedCount != 0 {
		t.Fatalf("Delete again: %+v %v", del, err)
	}
	del, err = ts.client.Delete(context.Background(), &storepb.DeleteRequest{Vid: 3, Key: 3, Cookie: photos[2].id.Cookie + 1, SizeCode: uint32(needle.SizeAll)})
	if err != nil || del.DeletedCount != 0 {
		t.Fatalf("Delete wrong cookie: %+v %v", del, err)
	}
	verify := func(ts *testServer) {
		t.Helper()
		for i, p := range photos {
			for _, s := range needle.PhotoSizes {
				want := http.StatusOK
				if i == 0 || (i == 1 && s == needle.SizeMedium) {
					want = http.StatusNotFound
				}
				check(ts, p, s, want)
			}
		}
	}
	verify(ts)

	// Restart over the same directory: deletes and writes persist.
	ts.stop(t)
	ts2 := startServer(t, so, ServerOptions{})
	verify(ts2)
	vs, err := ts2.client.VolumeStatus(context.Background(), &storepb.VolumeStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(vs.Volumes) != 1 || vs.Volumes[0].Vid != 3 || vs.Volumes[0].NeedleCount != 15 ||
		vs.Volumes[0].State != storepb.VolumeState_VOLUME_STATE_WRITABLE || vs.Volumes[0].DeletedBytes == 0 {
		t.Fatalf("VolumeStatus after restart: %v", vs)
	}
}

func TestGRPCStatusCodes(t *testing.T) {
	ts := startServer(t, Options{Dir: "/data", FS: vfs.NewMem(), VolumeSizeLimit: 64 << 10}, ServerOptions{})
	ctx := context.Background()
	ts.allocate(t, 1)
	ts.allocate(t, 2)
	r := rand.New(rand.NewPCG(3, 4))
	p := randomPhoto(r, 1, 10, 100)
	ts.writePhoto(t, p)

	_, err := ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 1})
	wantCode(t, "AllocateVolume existing", err, codes.FailedPrecondition)
	// Volume 2 is still empty: a retried allocation succeeds.
	if resp, err := ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 2}); err != nil || resp.GetVolume().GetVid() != 2 {
		t.Fatalf("retried allocation of an empty volume: %v %v", resp, err)
	}
	_, err = ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 0})
	wantCode(t, "AllocateVolume 0", err, codes.InvalidArgument)
	_, err = ts.client.AllocateVolume(ctx, &storepb.AllocateVolumeRequest{Vid: 9, SizeLimitBytes: 1 << 40})
	wantCode(t, "AllocateVolume over 32GiB", err, codes.InvalidArgument)

	one := func(vid uint32, n *storepb.Needle) error {
		_, err := ts.client.Write(ctx, &storepb.WriteRequest{Vid: vid, Needles: []*storepb.Needle{n}})
		return err
	}
	ok := &storepb.Needle{Key: 11, Cookie: 1, ContentType: 1, Data: []byte("x")}
	wantCode(t, "Write missing volume", one(77, ok), codes.NotFound)
	wantCode(t, "Write vid 0", one(0, ok), codes.InvalidArgument)
	_, err = ts.client.Write(ctx, &storepb.WriteRequest{Vid: 1})
	wantCode(t, "Write empty batch", err, codes.InvalidArgument)
	wantCode(t, "Write key 0", one(1, &storepb.Needle{Key: 0, Data: []byte("x")}), codes.InvalidArgument)
	wantCode(t, "Write bad size code", one(1, &storepb.Needle{Key: 1, SizeCode: 12, Data: []byte("x")}), codes.InvalidArgument)
	wantCode(t, "Write bad content type", one(1, &storepb.Needle{Key: 1, ContentType: 300, Data: []byte("x")}), codes.InvalidArgument)
	wantCode(t, "Write bad content type", one(1, &storepb.Needle{Key: 1, ContentType: 9, Data: []byte("x")}), codes.InvalidArgument)

	// Full: the write that does not fit, then the volume says read-only.
	wantCode(t, "Write over the size limit", one(2, &storepb.Needle{Key: 5, Data: make([]byte, 100<<10)}), codes.ResourceExhausted)
	vs, err := ts.client.VolumeStatus(ctx, &storepb.VolumeStatusRequest{Vid: 2})
	if err != nil || vs.Volumes[0].State != storepb.VolumeState_VOLUME_STATE_READ_ONLY || vs.Volumes[0].ReadOnlyReason == "" {
		t.Fatalf("VolumeStatus of a full volume: %v %v", vs, err)
	}
	err = one(2, ok)
	if c := status.Code(err); c != codes.FailedPrecondition && c != codes.ResourceExhausted {
		t.Fatalf("Write to a full volume: %v", err)
	}

	// Operator read-only: writes refused with FAILED_PRECONDITION, reads
	// and deletes still work.
	mr, err := ts.client.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: 1, Reason: "disk swap"})
	if err != nil || mr.Volume.State != storepb.VolumeState_VOLUME_STATE_READ_ONLY || mr.Volume.ReadOnlyReason != "operator: disk swap" {
		t.Fatalf("MarkReadOnly: %v %v", mr, err)
	}
	wantCode(t, "Write to read-only volume", one(1, ok), codes.FailedPrecondition)
	_, err = ts.client.MarkReadOnly(ctx, &storepb.MarkReadOnlyRequest{Vid: 55})
	wantCode(t, "MarkReadOnly missing volume", err, codes.NotFound)
	if resp, _ := ts.do(t, http.MethodGet, p.path(needle.SizeSmall), nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET from read-only volume: %d", resp.StatusCode)
	}
	del, err := ts.client.Delete(ctx, &storepb.DeleteRequest{Vid: 1, Key: 10, Cookie: p.id.Cookie, SizeCode: 1})
	if err != nil || del.DeletedCount != 1 {
		t.Fatalf("Delete on read-only volume: %v %v", del, err)
	}

	_, err = ts.client.Delete(ctx, &storepb.DeleteRequest{Vid: 1, Key: 10, SizeCode: 7})
	wantCode(t, "Delete bad size code", err, codes.InvalidArgument)
	_, err = ts.client.Delete(ctx, &storepb.DeleteRequest{Vid: 88, Key: 10})
	wantCode(t, "Delete missing volume", err, codes.NotFound)
	_, err = ts.client.Read(ctx, &storepb.ReadRequest{Vid: 1, Key: 10, Cookie: p.id.Cookie + 1, SizeCode: 0})
	wantCode(t, "Read wrong cookie", err, codes.NotFound)
	_, err = ts.client.Read(ctx, &storepb.ReadRequest{Vid: 1, Key: 10, Cookie: p.id.Cookie, SizeCode: 1})
	wantCode(t, "Read deleted", err, codes.NotFound)
	_, err = ts.client.Read(ctx, &storepb.ReadRequest{Vid: 66, Key: 10, SizeCode: 0})
	wantCode(t, "Read missing volume", err, codes.NotFound)
	_, err = ts.client.VolumeStatus(ctx, &storepb.VolumeStatusRequest{Vid: 66})
	wantCode(t, "VolumeStatus missing volume", err, codes.NotFound)
	all, err := ts.client.VolumeStatus(ctx, &storepb.VolumeStatusRequest{})
	if err != nil || len(all.Volumes) != 2 || all.Volumes[0].Vid != 1 || all.Volumes[1].Vid != 2 {
		t.Fatalf("VolumeStatus all: %v %v", all, err)
	}
}

// allowAll authorizes every write and delete: the store tests that are not
// about tokens.
type allowAll struct{}

func (allowAll) AuthorizeWrite(string, uint32, []uint64) error        { return nil }
func (allowAll) AuthorizeDelete(string, uint32, uint64, uint64) error { return nil }

// testAuthorizer accepts the token "write" for writes on vid 1 and
// "delete" for deletes of (1, 4, cookie 9), and records what it saw.
type testAuthorizer struct {
	mu   sync.Mutex
	seen []string
}

func (a *testAuthorizer) AuthorizeWrite(token string, vid uint32, keys []uint64) error {
	a.mu.Lock()
	a.seen = append(a.seen, fmt.Sprintf("write %s %d %v", token, vid, keys))
	a.mu.Unlock()
	if token != "write" || vid != 1 {
		return errors.New("bad token")
	}
	return nil
}

func (a *testAuthorizer) AuthorizeDelete(token string, vid uint32, key, cookie uint64) error {
	a.mu.Lock()
	a.seen = append(a.seen, fmt.Sprintf("delete %s %d %d %d", token, vid, key, cookie))
	a.mu.Unlock()
	if token != "delete" || vid != 1 || key != 4 || cookie != 9 {
		return errors.New("bad token")
	}
	return nil
}

func (a *testAuthorizer) last() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[len(a.seen)-1]
}

func TestWriteAuthorizer(t *testing.T) {
	auth := &testAuthorizer{}
	ts := startServer(t, Options{Dir: "/d", FS: vfs.NewMem()}, ServerOptions{Authorizer: auth})
	ctx := context.Background()
	ts.allocate(t, 1)
	ts.allocate(t, 2)
	write := func(vid uint32, token string) error {
		_, err := ts.client.Write(ctx, &storepb.WriteRequest{Vid: vid, WriteToken: token, Needles: []*storepb.Needle{
			{Key: 4, Cookie: 9, ContentType: uint32(needle.TypeJPEG), Data: []byte("a")}, {Key: 4, Cookie: 9, SizeCode: 1, Data: []byte("b")},
		}})
		return err
	}
	wantCode(t, "Write without token", write(1, ""), codes.Unauthenticated)
	wantCode(t, "Write with a token for another vid", write(2, "write"), codes.Unauthenticated)
	// A delete token is no write token.
	wantCode(t, "Write with a delete token", write(1, "delete"), codes.Unauthenticated)
	// Authorization comes before the volume lookup: no probing for vids.
	wantCode(t, "Write to a missing vid without token", write(99, "bad"), codes.Unauthenticated)
	if err := write(1, "write"); err != nil {
		t.Fatalf("authorized Write: %v", err)
	}
	if got := auth.last(); got != "write write 1 [4 4]" {
		t.Fatalf("authorizer saw %q", got)
	}
	del := func(cookie uint64, token string) (*storepb.DeleteResponse, error) {
		return ts.client.Delete(ctx, &storepb.DeleteRequest{Vid: 1, Key: 4, Cookie: cookie, SizeCode: uint32(needle.SizeAll), WriteToken: token})
	}
	_, err := del(9, "forged")
	wantCode(t, "Delete with a bad token", err, codes.Unauthenticated)
	_, err = del(9, "write")
	wantCode(t, "Delete with a write token", err, codes.Unauthenticated)
	_, err = del(10, "delete")
	wantCode(t, "Delete of another cookie", err, codes.Unauthenticated)
	if got := auth.last(); got != "delete delete 1 4 10" {
		t.Fatalf("authorizer saw %q", got)
	}
	if resp, _ := ts.do(t, http.MethodGet, "/p/1-4-0000000000000009/t", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("refused delete removed the photo: %d", resp.StatusCode)
	}
	resp, err := del(9, "delete")
	if err != nil || resp.DeletedCount != 2 {
		t.Fatalf("authorized Delete: %v %v", resp, err)
	}
}

// A store without an authorizer (no cluster secret) takes no writes and
// no deletes at all.
func TestNoAuthorizerRefusesWrites(t *testing.T) {
	st, err := Open(context.Background(), Options{Dir: "/d", FS: vfs.NewMem(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateVolume(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(st, ServerOptions{HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	conn, err := rpc.Dial(rpc.Insecure(), srv.GRPCAddr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := storepb.NewStoreClient(conn)
	_, err = c.Write(ctx, &storepb.WriteRequest{Vid: 1, WriteToken: "anything", Needles: []*storepb.Needle{{Key: 4, Cookie: 9, Data: []byte("a")}}})
	wantCode(t, "Write on a store without a secret", err, codes.Unauthenticated)
	_, err = c.Delete(ctx, &storepb.DeleteRequest{Vid: 1, Key: 4, Cookie: 9, SizeCode: uint32(needle.SizeAll), WriteToken: "anything"})
	wantCode(t, "Delete on a store without a secret", err, codes.Unauthenticated)
	v, _ := st.Volume(1)
	if n := v.Status().Needles; n != 0 {
		t.Fatalf("%d needles written", n)
	}
}
