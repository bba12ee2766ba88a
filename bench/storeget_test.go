package bench

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

// fakeStore keeps written needles in memory and serves them at their
// image paths.
type fakeStore struct {
	storepb.UnimplementedStoreServer
	mu     sync.Mutex
	images map[string][]byte
}

func (f *fakeStore) AllocateVolume(context.Context, *storepb.AllocateVolumeRequest) (*storepb.AllocateVolumeResponse, error) {
	return &storepb.AllocateVolumeResponse{}, nil
}

func (f *fakeStore) Write(_ context.Context, req *storepb.WriteRequest) (*storepb.WriteResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range req.Needles {
		if want := fmt.Sprintf("tok-%d-%d", req.Vid, n.Key); req.WriteToken != want {
			return nil, fmt.Errorf("token %q, want %q", req.WriteToken, want)
		}
		id := needle.PhotoID{Vid: req.Vid, Key: n.Key, Cookie: n.Cookie}
		f.images[needle.ImagePath(id, needle.SizeCode(n.SizeCode), "")] = bytes.Clone(n.Data)
	}
	return &storepb.WriteResponse{}, nil
}

func (f *fakeStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	b, ok := f.images[r.URL.Path]
	f.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Write(b)
}

func TestRunStoreGet(t *testing.T) {
	f := &fakeStore{images: map[string][]byte{}}
	gln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g, err := rpc.NewServer(rpc.Insecure(), nil, rpc.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	storepb.RegisterStoreServer(g, f)
	go g.Serve(gln)
	defer g.Stop()
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: f}
	go hs.Serve(hln)
	defer hs.Close()

	dir := t.TempDir()
	var out bytes.Buffer
	cfg := StoreGetConfig{
		GRPCAddr:    gln.Addr().String(),
		SignWrite:   func(vid uint32, key uint64) (string, error) { return fmt.Sprintf("tok-%d-%d", vid, key), nil },
		URL:         "http://" + hln.Addr().String(),
		Photos:      20,
		Sizes:       [4]int{100, 200, 300, 400},
		Manifest:    filepath.Join(dir, "manifest"),
		ExportDir:   filepath.Join(dir, "static"),
		Concurrency: []int{2},
		Duration:    100 * time.Millisecond,
		Warmup:      true,
		Out:         &out,
	}
	results, err := RunStoreGet(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.images) != 80 || len(results) != 2 {
		t.Fatalf("%d images stored, %d results", len(f.images), len(results))
	}
	for _, r := range results {
		if r.Requests == 0 || r.Errors != 0 || r.P50 <= 0 || r.P99 < r.P50 {
			t.Errorf("result %+v", r)
		}
	}
	for path, data := range f.images {
		got, err := os.ReadFile(filepath.Join(cfg.ExportDir, path))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("exported %s: %v", path, err)
		}
	}
	if !strings.Contains(out.String(), "| zipf") {
		t.Errorf("no results table in output:\n%s", out.String())
	}

	// Re-run from the manifest alone; the paths written for wrk name
	// loaded images.
	cfg.GRPCAddr, cfg.Warmup, cfg.Distributions = "", false, []Distribution{Uniform}
	if _, err := RunStoreGet(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	ids, err := ReadManifest(cfg.Manifest)
	if err != nil || len(ids) != 20 {
		t.Fatalf("manifest: %d ids, %v", len(ids), err)
	}
	var paths bytes.Buffer
	if err := WritePaths(&paths, ids, Zipf, 1.1, 50, 1); err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(paths.String())
	if len(lines) != 50 {
		t.Fatalf("%d paths", len(lines))
	}
	for _, p := range lines {
		if _, ok := f.images[p]; !ok {
			t.Fatalf("path %s names no loaded image", p)
		}
	}
}
