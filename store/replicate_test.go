package store

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// volumeSource serves another Store's volume in-process, optionally
// failing after some chunks, and records the offsets it was asked for.
type volumeSource struct {
	st        *Store
	failAfter int
	offsets   []int64
}

var errInterrupted = errors.New("connection lost")

func (s *volumeSource) CopyVolume(ctx context.Context, vid uint32, offset int64, gen uint32, fn func([]byte, int64, int64, uint32) error) error {
	s.offsets = append(s.offsets, offset)
	v, err := s.st.Volume(vid)
	if err != nil {
		return err
	}
	chunks := 0
	return v.CopyTo(ctx, offset, gen, func(c []byte, off, total int64, g uint32) error {
		if s.failAfter > 0 && chunks == s.failAfter {
			return errInterrupted
		}
		chunks++
		return fn(c, off, total, g)
	})
}

func (s *volumeSource) Tombstones(ctx context.Context, vid uint32) ([]needle.Needle, error) {
	v, err := s.st.Volume(vid)
	if err != nil {
		return nil, err
	}
	return v.Tombstones(ctx)
}

// midPullSource runs during() once, after the first chunk of the pull has
// been handed over.
type midPullSource struct {
	volumeSource
	during func()
}

func (m *midPullSource) CopyVolume(ctx context.Context, vid uint32, offset int64, gen uint32, fn func([]byte, int64, int64, uint32) error) error {
	chunks := 0
	return m.volumeSource.CopyVolume(ctx, vid, offset, gen, func(c []byte, off, total int64, g uint32) error {
		if err := fn(c, off, total, g); err != nil {
			return err
		}
		if chunks++; chunks == 1 && m.during != nil {
			m.during()
			m.during = nil
		}
		return nil
	})
}

// TestReplicateVolumeKeepsDeletesDuringPull deletes photos while a replica
// sync pulls a read-only volume: on both replicas, on the syncing one only
// and on the source only. None of them may be served by the new copy, and
// none may come back after a restart.
func TestReplicateVolumeKeepsDeletesDuringPull(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	src, err := Open(ctx, Options{Dir: "/src", FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := Open(ctx, Options{Dir: "/dst", FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	data := func(k uint64) []byte { return bytes.Repeat([]byte{byte(k), 9, 3}, 30000) }
	sv, err := src.CreateVolume(ctx, 6)
	if err != nil {
		t.Fatal(err)
	}
	dv, err := dst.CreateVolume(ctx, 6)
	if err != nil {
		t.Fatal(err)
	}
	for k := uint64(1); k <= 60; k++ {
		for _, v := range []*volume.Volume{sv, dv} {
			if _, err := v.Write(ctx, []*needle.Needle{{Key: k, Cookie: k, Size: needle.SizeLarge, Data: data(k), AppendTime: int64(k) << 30}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, v := range []*volume.Volume{sv, dv} {
		if err := v.MarkReadOnly(ctx, "missing replica"); err != nil {
			t.Fatal(err)
		}
	}
	const both, dstOnly, srcOnly, notYet = 58, 59, 60, 70
	mustDelete := func(v *volume.Volume, k uint64) {
		t.Helper()
		if _, err := v.Delete(ctx, k, k, needle.SizeAll); err != nil {
			t.Fatal(err)
		}
	}
	source := &midPullSource{volumeSource: volumeSource{st: src}, during: func() {
		// The pull has a snapshot of the source: these land after it.
		mustDelete(sv, both)
		mustDelete(dv, both)
		mustDelete(dv, dstOnly)
		mustDelete(sv, srcOnly)
		mustDelete(dv, notYet) // a key neither replica holds
	}}
	nv, err := dst.ReplicateVolume(ctx, 6, "src", source, nil)
	if err != nil {
		t.Fatal(err)
	}
	if source.during != nil {
		t.Fatal("the deletes did not run during the pull")
	}
	check := func(what string, v *volume.Volume) {
		t.Helper()
		for k := uint64(1); k <= 60; k++ {
			_, _, err := v.Read(k, k, needle.SizeLarge, nil)
			switch k {
			case both, dstOnly, srcOnly:
				if !errors.Is(err, volume.ErrNotFound) {
					t.Fatalf("%s: key %d deleted during the pull is served again: %v", what, k, err)
				}
			default:
				if err != nil {
					t.Fatalf("%s: key %d: %v", what, k, err)
				}
			}
		}
		if !v.Deleted(notYet, needle.SizeAll) {
			t.Fatalf("%s: the delete of a key not yet written was lost", what)
		}
	}
	check("after the sync", nv)
	if err := nv.Check(); err != nil {
		t.Fatal(err)
	}
	// The tombstones were made durable before the copy went in service.
	dst.Close()
	dst2, err := Open(ctx, Options{Dir: "/dst", FS: fs.CrashClone()})
	if err != nil {
		t.Fatal(err)
	}
	defer dst2.Close()
	v2, err := dst2.Volume(6)
	if err != nil {
		t.Fatal(err)
	}
	check("after a power cut", v2)
}

func TestReplicateVolumeResumes(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	src, err := Open(ctx, Options{Dir: "/src", FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := Open(ctx, Options{Dir: "/dst", FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	v, err := src.CreateVolume(ctx, 4)
	if err != nil {
		t.Fatal(err)
	}
	data := func(k uint64) []byte { return bytes.Repeat([]byte{byte(k), byte(k >> 8), 7}, 20000) }
	for k := uint64(1); k <= 80; k++ {
		if _, err := v.Write(ctx, []*needle.Needle{{Key: k, Cookie: k, Size: needle.SizeLarge, Data: data(k)}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.Delete(ctx, 3, 3, needle.SizeAll); err != nil {
		t.Fatal(err)
	}
	// The destination holds a damaged copy to be replaced.
	old, err := dst.CreateVolume(ctx, 4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Write(ctx, []*needle.Needle{{Key: 500, Cookie: 1, Size: needle.SizeThumb, Data: []byte("stale")}}); err != nil {
		t.Fatal(err)
	}

	flaky := &volumeSource{st: src, failAfter: 2}
	if _, err := dst.ReplicateVolume(ctx, 4, "src", flaky, nil); !errors.Is(err, errInterrupted) {
		t.Fatalf("interrupted pull: %v", err)
	}
	part := volume.DatPath(filepath.Join("/dst", syncDir), 4)
	if fi, err := fs.Stat(part); err != nil || fi.Size() != 2<<20 {
		t.Fatalf("partial pull: %v, %v", fi, err)
	}
	// A partial pull from another replica is not resumed: its bytes are
	// laid out differently.
	other := &volumeSource{st: src, failAfter: 2}
	if _, err := dst.ReplicateVolume(ctx, 4, "another store", other, nil); !errors.Is(err, errInterrupted) {
		t.Fatalf("interrupted pull: %v", err)
	}
	if len(other.offsets) != 1 || other.offsets[0] != 0 {
		t.Fatalf("a pull from another source resumed at %v, want [0]", other.offsets)
	}
	good := &volumeSource{st: src}
	var phases []string
	nv, err := dst.ReplicateVolume(ctx, 4, "another store", good, func(phase string, done, total int64) {
		if len(phases) == 0 || phases[len(phases)-1] != phase {
			phases = append(phases, phase)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(good.offsets) != 1 || good.offsets[0] != 2<<20 {
		t.Fatalf("the resumed pull started at %v, want [%d]", good.offsets, 2<<20)
	}
	if len(phases) != 2 || phases[0] != "copy" || phases[1] != "verify" {
		t.Fatalf("phases %v", phases)
	}
	got, err := dst.Volume(4)
	if err != nil || got != nv {
		t.Fatalf("store does not serve the new copy: %v", err)
	}
	for k := uint64(1); k <= 80; k++ {
		n, _, err := nv.Read(k, k, needle.SizeLarge, nil)
		if k == 3 {
			if !errors.Is(err, volume.ErrNotFound) {
				t.Fatalf("deleted key: %v", err)
			}
			continue
		}
		if err != nil || !bytes.Equal(n.Data, data(k)) {
			t.Fatalf("key %d: %v", k, err)
		}
	}
	if nv.Has(500, needle.SizeThumb) {
		t.Fatal("the replaced copy's data is still served")
	}
	if err := nv.Check(); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Stat(part); err == nil {
		t.Fatal("the staged copy was left behind")
	}
	// The swap is durable: the store reopens with the new copy.
	dst.Close()
	dst2, err := Open(ctx, Options{Dir: "/dst", FS: fs.CrashClone()})
	if err != nil {
		t.Fatal(err)
	}
	defer dst2.Close()
	v2, err := dst2.Volume(4)
	if err != nil || v2.Status().Images != 79 {
		t.Fatalf("after restart: %v", err)
	}
}

func TestReplicateVolumeRejectsDamagedSource(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	src, _ := Open(ctx, Options{Dir: "/src", FS: fs})
	defer src.Close()
	dst, _ := Open(ctx, Options{Dir: "/dst", FS: fs})
	defer dst.Close()
	v, _ := src.CreateVolume(ctx, 2)
	for k := uint64(1); k <= 5; k++ {
		v.Write(ctx, []*needle.Needle{{Key: k, Cookie: k, Size: needle.SizeSmall, Data: bytes.Repeat([]byte{1}, 500)}})
	}
	bad := &corruptingSource{volumeSource{st: src}}
	if _, err := dst.ReplicateVolume(ctx, 2, "src", bad, nil); !errors.Is(err, ErrSourceDamaged) {
		t.Fatalf("got %v, want ErrSourceDamaged", err)
	}
	if _, err := dst.Volume(2); !errors.Is(err, ErrVolumeNotHere) {
		t.Fatalf("a damaged copy was put in service: %v", err)
	}
}

// corruptingSource flips a byte in the middle of what it sends.
type corruptingSource struct{ volumeSource }

func (c *corruptingSource) CopyVolume(ctx context.Context, vid uint32, offset int64, gen uint32, fn func([]byte, int64, int64, uint32) error) error {
	return c.volumeSource.CopyVolume(ctx, vid, offset, gen, func(b []byte, off, total int64, g uint32) error {
		b = bytes.Clone(b)
		b[len(b)/2] ^= 0xff
		return fn(b, off, total, g)
	})
}
