package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

func TestOpenCreateReopen(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	opts := Options{Dir: "/data", FS: fs}
	s, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Ready() || len(s.Volumes()) != 0 {
		t.Fatal("fresh store should be ready and empty")
	}
	for vid := uint32(1); vid <= 5; vid++ {
		v, err := s.CreateVolume(ctx, vid)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Write(ctx, []*needle.Needle{{Key: uint64(vid), Cookie: 7, Size: needle.SizeThumb, Data: []byte("x")}}); err != nil {
			t.Fatal(err)
		}
	}
	again, err := s.CreateVolume(ctx, 3)
	if err != nil || again.Vid() != 3 {
		t.Fatalf("re-create: %v", err)
	}
	if _, err := s.Volume(42); !errors.Is(err, ErrVolumeNotHere) {
		t.Fatalf("missing volume: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A damaged volume and a leftover temporary file do not stop the
	// store from serving the others.
	f, _ := fs.Create(filepath.Join("/data", "9.dat"))
	f.WriteAt(make([]byte, 100), 0)
	f.Close()
	f, _ = fs.Create(filepath.Join("/data", "4.readonly.tmp"))
	f.Close()

	s, err = Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vs := s.Volumes()
	if len(vs) != 5 {
		t.Fatalf("%d volumes after reopen, want 5", len(vs))
	}
	for i, v := range vs {
		if v.Vid() != uint32(i+1) {
			t.Fatalf("volumes out of order: %d at %d", v.Vid(), i)
		}
		if _, _, err := v.Read(uint64(v.Vid()), 7, needle.SizeThumb, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Volume(9); err == nil || errors.Is(err, ErrVolumeNotHere) {
		t.Fatalf("damaged volume: %v", err)
	}
	if !errors.Is(s.Failed()[9], volume.ErrNotVolume) {
		t.Fatalf("failed volumes: %v", s.Failed())
	}
	if _, err := fs.Stat(filepath.Join("/data", "4.readonly.tmp")); err == nil {
		t.Fatal("leftover .tmp file was not removed")
	}
}

// TestOneProcessPerDirectory: a second store, or an offline tool that
// changes files, is refused while a store holds the data directory.
func TestOneProcessPerDirectory(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	s, err := Open(ctx, Options{Dir: "/data", FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVolume(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, Options{Dir: "/data", FS: fs}); !errors.Is(err, vfs.ErrLocked) {
		t.Fatalf("second store on the directory: %v", err)
	}
	if _, err := volume.CompactFile(ctx, volume.DatPath("/data", 1), volume.Options{FS: fs}, volume.CompactOptions{}); !errors.Is(err, vfs.ErrLocked) {
		t.Fatalf("offline compaction under a running store: %v", err)
	}
	if _, err := volume.Reindex(ctx, volume.DatPath("/data", 1), fs); !errors.Is(err, vfs.ErrLocked) {
		t.Fatalf("reindex under a running store: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := volume.Reindex(ctx, volume.DatPath("/data", 1), fs); err != nil {
		t.Fatalf("reindex after the store stopped: %v", err)
	}
	s2, err := Open(ctx, Options{Dir: "/data", FS: fs})
	if err != nil {
		t.Fatalf("store after the first closed: %v", err)
	}
	s2.Close()
}
