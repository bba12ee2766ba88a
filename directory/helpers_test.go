package directory

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

var testSecret = []byte("test secret of the directory tests, long enough")

// testInterval is the fake stores' heartbeat interval. The directory's
// interval defaults to 20 of them in tests, so that a loaded machine does
// not make a store look dead; liveness tests set a shorter one.
const testInterval = 50 * time.Millisecond

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// startDirectory starts a directory on 127.0.0.1:0 with test defaults and
// stops it at the end of the test.
func startDirectory(t testing.TB, opts Options) *Server {
	t.Helper()
	opts.Dir = cmp.Or(opts.Dir, t.TempDir())
	opts.GRPCAddr = cmp.Or(opts.GRPCAddr, "127.0.0.1:0")
	opts.HTTPAddr = cmp.Or(opts.HTTPAddr, "127.0.0.1:0")
	opts.HeartbeatInterval = cmp.Or(opts.HeartbeatInterval, 20*testInterval)
	if opts.Secret == nil {
		opts.Secret = testSecret
	}
	opts.MinStoreFreeBytes = cmp.Or(opts.MinStoreFreeBytes, 1)
	opts.MinWritable = cmp.Or(opts.MinWritable, 1)
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	s, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

func dial(t testing.TB, addr net.Addr) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dirClient(t testing.TB, s *Server) directorypb.DirectoryClient {
	return directorypb.NewDirectoryClient(dial(t, s.GRPCAddr()))
}

// waitFor polls cond until it returns nil or the deadline passes.
func waitFor(t testing.TB, what string, cond func() error) {
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

// fakeStore is a store's gRPC surface (AllocateVolume, MarkReadOnly) and
// heartbeat loop, with volumes held in memory.
type fakeStore struct {
	storepb.UnimplementedStoreServer
	id, rack string
	ln       net.Listener
	srv      *grpc.Server
	paused   atomic.Bool // no heartbeats while set
	beats    atomic.Int64

	mu      sync.Mutex
	vols    map[uint32]*storepb.VolumeInfo
	secrets map[uint32][]byte // the needle secret each allocation carried
	cmds    []*directorypb.StoreCommand

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startFakeStore(t testing.TB, dir *Server, id, rack string) *fakeStore {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeStore{id: id, rack: rack, ln: ln, srv: grpc.NewServer(), vols: map[uint32]*storepb.VolumeInfo{}}
	storepb.RegisterStoreServer(f.srv, f)
	go f.srv.Serve(ln)
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	client := directorypb.NewDirectoryClient(dial(t, dir.GRPCAddr()))
	f.wg.Go(func() { f.heartbeatLoop(ctx, client) })
	t.Cleanup(f.stop)
	return f
}

func (f *fakeStore) stop() {
	f.cancel()
	f.wg.Wait()
	f.srv.Stop()
}

func (f *fakeStore) heartbeatLoop(ctx context.Context, client directorypb.DirectoryClient) {
	for ctx.Err() == nil {
		stream, err := client.Heartbeat(ctx)
		if err != nil {
			time.Sleep(testInterval)
			continue
		}
		for ctx.Err() == nil {
			if !f.paused.Load() {
				if err := stream.Send(f.report()); err != nil {
					break
				}
				resp, err := stream.Recv()
				if err != nil {
					break
				}
				f.beats.Add(1)
				f.apply(resp.GetCommands())
			}
			select {
			case <-ctx.Done():
			case <-time.After(testInterval):
			}
		}
		stream.CloseSend()
	}
}

func (f *fakeStore) report() *directorypb.HeartbeatRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	req := &directorypb.HeartbeatRequest{StoreId: f.id, GrpcAddr: f.ln.Addr().String(), HttpAddr: "http-" + f.id + ":8080",
		Rack: f.rack, FreeBytes: 100 << 30}
	for _, v := range f.vols {
		req.Volumes = append(req.Volumes, clone(v))
	}
	slices.SortFunc(req.Volumes, func(a, b *storepb.VolumeInfo) int { return cmp.Compare(a.GetVid(), b.GetVid()) })
	return req
}

func clone(v *storepb.VolumeInfo) *storepb.VolumeInfo {
	return proto.Clone(v).(*storepb.VolumeInfo)
}

func (f *fakeStore) apply(cmds []*directorypb.StoreCommand) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cmds {
		f.cmds = append(f.cmds, c)
		if m := c.GetMarkReadOnly(); m != nil {
			if v, ok := f.vols[m.GetVid()]; ok {
				v.State, v.ReadOnlyReason = storepb.VolumeState_VOLUME_STATE_READ_ONLY, "directory: "+m.GetReason()
			}
		}
	}
}

func (f *fakeStore) AllocateVolume(_ context.Context, req *storepb.AllocateVolumeRequest) (*storepb.AllocateVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vols[req.GetVid()]; ok {
		return nil, fmt.Errorf("volume %d exists", req.GetVid())
	}
	v := &storepb.VolumeInfo{Vid: req.GetVid(), State: storepb.VolumeState_VOLUME_STATE_WRITABLE, SizeBytes: 64, SizeLimitBytes: req.GetSizeLimitBytes()}
	f.vols[req.GetVid()] = v
	if f.secrets == nil {
		f.secrets = map[uint32][]byte{}
	}
	f.secrets[req.GetVid()] = req.GetVolumeSecret()
	return &storepb.AllocateVolumeResponse{Volume: clone(v)}, nil
}

// secret returns the needle secret the allocation of vid carried.
func (f *fakeStore) secret(vid uint32) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.secrets[vid]
}

func (f *fakeStore) MarkReadOnly(_ context.Context, req *storepb.MarkReadOnlyRequest) (*storepb.MarkReadOnlyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[req.GetVid()]
	if !ok {
		return nil, io.ErrUnexpectedEOF
	}
	v.State, v.ReadOnlyReason = storepb.VolumeState_VOLUME_STATE_READ_ONLY, "operator: "+req.GetReason()
	return &storepb.MarkReadOnlyResponse{Volume: clone(v)}, nil
}

// volume returns a copy of the fake's volume vid.
func (f *fakeStore) volume(vid uint32) (*storepb.VolumeInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vols[vid]
	if !ok {
		return nil, false
	}
	return clone(v), true
}

func (f *fakeStore) setSize(vid uint32, size uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vols[vid].SizeBytes = size
}

// waitAlive waits until the directory lists n alive stores.
func waitAlive(t testing.TB, c directorypb.DirectoryClient, n int) {
	t.Helper()
	waitFor(t, "stores alive", func() error {
		resp, err := c.ListStores(context.Background(), &directorypb.ListStoresRequest{})
		if err != nil {
			return err
		}
		alive := 0
		for _, s := range resp.GetStores() {
			if s.GetState() == directorypb.StoreState_STORE_STATE_ALIVE {
				alive++
			}
		}
		if alive != n {
			return fmt.Errorf("%d alive, want %d", alive, n)
		}
		return nil
	})
}

// The wire states, as the gRPC answers carry them.
const (
	pbWritable = storepb.VolumeState_VOLUME_STATE_WRITABLE
	pbReadOnly = storepb.VolumeState_VOLUME_STATE_READ_ONLY
)
