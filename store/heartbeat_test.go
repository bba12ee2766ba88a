package store

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
	"github.com/haybale/haybale/store/volume"
)

// fakeDirectory records heartbeats and answers the first one from each
// stream with the commands queued in cmds.
type fakeDirectory struct {
	directorypb.UnimplementedDirectoryServer
	mu      sync.Mutex
	reqs    []*directorypb.HeartbeatRequest
	streams int
	cmds    []*directorypb.StoreCommand
}

func (d *fakeDirectory) Heartbeat(stream directorypb.Directory_HeartbeatServer) error {
	d.mu.Lock()
	d.streams++
	d.mu.Unlock()
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		d.mu.Lock()
		d.reqs = append(d.reqs, req)
		cmds := d.cmds
		d.cmds = nil
		d.mu.Unlock()
		if err := stream.Send(&directorypb.HeartbeatResponse{IntervalMs: 20, Commands: cmds}); err != nil {
			return nil
		}
	}
}

func (d *fakeDirectory) last() (*directorypb.HeartbeatRequest, int, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.reqs) == 0 {
		return nil, 0, d.streams
	}
	return d.reqs[len(d.reqs)-1], len(d.reqs), d.streams
}

func poll(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serveDirectory serves d on addr ("127.0.0.1:0" for a new port) until
// the returned stop is called.
func serveDirectory(t *testing.T, d *fakeDirectory, addr string) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	g, err := rpc.NewServer(rpc.Insecure(), nil, rpc.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	directorypb.RegisterDirectoryServer(g, d)
	go g.Serve(ln)
	return ln.Addr().String(), g.Stop
}

func TestHeartbeater(t *testing.T) {
	dataDir := t.TempDir()
	st, err := Open(context.Background(), Options{Dir: dataDir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.CreateVolume(context.Background(), 3); err != nil {
		t.Fatal(err)
	}

	d := &fakeDirectory{}
	addr, stopDir := serveDirectory(t, d, "127.0.0.1:0")
	h, err := NewHeartbeater(st, HeartbeaterOptions{DirectoryAddr: addr, GRPCAddr: "g:1", HTTPAddr: "h:2", PublicURL: "https://s",
		Rack: "r7", Interval: 20 * time.Millisecond, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()

	// A full report arrives.
	poll(t, "first report", func() error {
		req, _, _ := d.last()
		if req == nil {
			return errors.New("no heartbeat yet")
		}
		if req.GetStoreId() != h.StoreID() || req.GetRack() != "r7" || req.GetGrpcAddr() != "g:1" || req.GetPublicUrl() != "https://s" {
			return errors.New("report without the store's identity")
		}
		if req.GetFreeBytes() == 0 || len(req.GetVolumes()) != 1 || req.GetVolumes()[0].GetVid() != 3 {
			return errors.New("report without free space or volumes")
		}
		return nil
	})

	// Commands are carried out, and corrupt reads are reported.
	d.mu.Lock()
	d.cmds = []*directorypb.StoreCommand{
		{Command: &directorypb.StoreCommand_AllocateVolume{AllocateVolume: &storepb.AllocateVolumeRequest{Vid: 4}}},
		{Command: &directorypb.StoreCommand_MarkReadOnly{MarkReadOnly: &storepb.MarkReadOnlyRequest{Vid: 3, Reason: "full"}}},
	}
	d.mu.Unlock()
	h.ReportCorrupt(3, 0x99, needle.SizeMedium, errors.New("checksum mismatch"))
	poll(t, "commands applied and corruption reported", func() error {
		v, err := st.Volume(4)
		if err != nil {
			return err
		}
		if s, _ := v.State(); s != volume.StateWritable {
			return errors.New("allocated volume not writable")
		}
		v3, _ := st.Volume(3)
		if s, reason := v3.State(); s != volume.StateReadOnly || reason != "directory: full" {
			return errors.New("volume 3 not read-only")
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, r := range d.reqs {
			for _, c := range r.GetCorrupt() {
				if c.GetVid() == 3 && c.GetKey() == 0x99 && c.GetSizeCode() == 2 && c.GetDetail() == "checksum mismatch" {
					return nil
				}
			}
		}
		return errors.New("corrupt read not reported")
	})

	// The directory goes away and comes back on the same address: the
	// heartbeater reconnects.
	_, n, streams := d.last()
	stopDir()
	_, stopDir2 := serveDirectory(t, d, addr)
	defer stopDir2()
	poll(t, "reconnected", func() error {
		_, n2, streams2 := d.last()
		if streams2 <= streams || n2 <= n {
			return errors.New("no new stream")
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestStoreID(t *testing.T) {
	dir := t.TempDir()
	a, err := LoadOrCreateStoreID(vfs.Default, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateStoreID(vfs.Default, dir, "other")
	if err != nil {
		t.Fatal(err)
	}
	if a == "" || a != b {
		t.Fatalf("store ids %q then %q", a, b)
	}
	if err := os.WriteFile(filepath.Join(dir, StoreIDFile), []byte("has space\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateStoreID(vfs.Default, dir, ""); err == nil {
		t.Fatal("an invalid store id was accepted")
	}
	if _, err := NewHeartbeater(nil, HeartbeaterOptions{}); err == nil {
		t.Fatal("NewHeartbeater(nil) succeeded")
	}
}

// The store id goes through the store's file system, and a data folder
// keeps the identity it was first given.
func TestStoreIDThroughVFS(t *testing.T) {
	mem := vfs.NewMem()
	st, err := Open(context.Background(), Options{Dir: "/d", FS: mem, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	opts := HeartbeaterOptions{DirectoryAddr: "d:1", GRPCAddr: "g:1", HTTPAddr: "h:1", StoreID: "store-a", Logger: quietLogger()}
	h, err := NewHeartbeater(st, opts)
	if err != nil {
		t.Fatal(err)
	}
	if h.StoreID() != "store-a" {
		t.Fatalf("store id %q", h.StoreID())
	}
	if id, err := LoadOrCreateStoreID(mem, "/d", ""); err != nil || id != "store-a" {
		t.Fatalf("id on the mem FS: %q %v", id, err)
	}
	if _, err := os.Stat(filepath.Join("/d", StoreIDFile)); err == nil {
		t.Fatal("the store id was written to the OS file system")
	}
	opts.StoreID = "store-b"
	if _, err := NewHeartbeater(st, opts); err == nil {
		t.Fatal("a store took over another store's data folder")
	}
	if _, err := LoadOrCreateStoreID(mem, "/e", "has space"); err == nil {
		t.Fatal("an invalid preferred id was written")
	}
}
