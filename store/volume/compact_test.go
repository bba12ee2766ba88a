package volume

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/internal/vfs/errorfs"
	"github.com/haybale/haybale/needle"
)

func TestCompactReclaimsDeleted(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 30, Options{})
	var kept [][]*needle.Needle
	for k := uint64(1); k <= 200; k++ {
		ns := photo(k, k*3)
		mustWrite(t, v, ns)
		if k%2 == 0 {
			if _, err := v.Delete(context.Background(), k, k*3, needle.SizeAll); err != nil {
				t.Fatal(err)
			}
		} else {
			kept = append(kept, ns)
		}
	}
	// A rewritten size: only the newest copy survives.
	rewrite := &needle.Needle{Key: 1, Cookie: 3, Size: needle.SizeSmall, ContentType: needle.TypePNG, Data: []byte("newer")}
	mustWrite(t, v, []*needle.Needle{rewrite})
	kept[0][1] = rewrite
	before := v.Status()
	var progressCalls int
	res, err := v.Compact(context.Background(), CompactOptions{Progress: func(done, total int64) { progressCalls++ }})
	if err != nil {
		t.Fatal(err)
	}
	after := v.Status()
	t.Logf("%+v", res)
	if res.Generation != 1 || after.Generation != 1 || res.SizeAfter != after.Size {
		t.Fatalf("generation/size: %+v %+v", res, after)
	}
	// Tombstones are permanent: the 100 of them are copied too.
	tombs := int64(100 * needle.EncodedLen(0))
	if after.Size != SuperblockSize+before.LiveBytes+tombs || after.Deleted != 0 || after.TombstoneBytes != tombs {
		t.Fatalf("compacted size %d, want %d live bytes and %d of tombstones after the superblock", after.Size, before.LiveBytes, tombs)
	}
	if res.Reclaimed != before.Size-after.Size || res.Reclaimed < before.Size/3 {
		t.Fatalf("reclaimed %d of %d", res.Reclaimed, before.Size)
	}
	if progressCalls == 0 || res.Copied != before.Images {
		t.Fatalf("progress %d, copied %d of %d", progressCalls, res.Copied, before.Images)
	}
	check := func(v *Volume) {
		for _, ns := range kept {
			for _, n := range ns {
				got, _, err := v.Read(n.Key, n.Cookie, n.Size, nil)
				if err != nil || string(got.Data) != string(n.Data) || got.AppendTime == 0 {
					t.Fatalf("key %d size %v after compaction: %v", n.Key, n.Size, err)
				}
			}
		}
		for k := uint64(2); k <= 200; k += 2 {
			expectNotFound(t, v, k, k*3, needle.SizeThumb)
		}
		if err := v.Check(); err != nil {
			t.Fatal(err)
		}
	}
	check(v)
	// The volume keeps taking writes after the swap, and all of it
	// survives a restart and a power cut.
	extra := photo(500, 5)
	mustWrite(t, v, extra)
	crashed := fs.CrashCloneTorn(rand.Uint64())
	v.Close()
	for _, f := range []vfs.FS{fs, crashed} {
		v = reopen(t, f, 30)
		check(v)
		for _, n := range extra {
			expectRead(t, v, n)
		}
		v.Close()
	}
}

// TestCompactOnline compacts while writers, deleters and readers run: no
// read fails and every acknowledged write is there afterwards.
func TestCompactOnline(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 31, Options{})
	defer v.Close()
	for k := uint64(1); k <= 300; k++ {
		mustWrite(t, v, photo(k, k))
		if k%3 == 0 {
			if _, err := v.Delete(context.Background(), k, k, needle.SizeAll); err != nil {
				t.Fatal(err)
			}
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var nextKey atomic.Uint64
	nextKey.Store(1000)
	var mu sync.Mutex
	written := map[uint64]bool{}
	deleted := map[uint64]bool{}
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() { // writers and deleters of new photos
			defer wg.Done()
			for i := 0; i < 150; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := nextKey.Add(1)
				if _, err := v.Write(context.Background(), photo(k, k)); err != nil {
					t.Error(err)
					return
				}
				del := k%5 == 0
				if del {
					if _, err := v.Delete(context.Background(), k, k, needle.SizeAll); err != nil {
						t.Error(err)
						return
					}
				}
				mu.Lock()
				written[k], deleted[k] = true, del
				mu.Unlock()
			}
		}()
	}
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func(seed uint64) { // readers of the stable photos
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(seed, 0))
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := 1 + rnd.Uint64N(300)
				size := needle.SizeCode(rnd.IntN(4))
				_, _, err := v.Read(k, k, size, nil)
				if k%3 == 0 {
					if !errors.Is(err, ErrNotFound) {
						t.Errorf("deleted key %d: %v", k, err)
					}
				} else if err != nil {
					t.Errorf("read key %d during compaction: %v", k, err)
				}
			}
		}(uint64(r))
	}
	for i := 0; i < 3; i++ {
		time.Sleep(5 * time.Millisecond)
		if _, err := v.Compact(context.Background(), CompactOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if v.Superblock().Generation != 3 {
		t.Fatalf("generation %d, want 3", v.Superblock().Generation)
	}
	check := func(v *Volume) {
		mu.Lock()
		defer mu.Unlock()
		for k := range written {
			for _, n := range photo(k, k) {
				if deleted[k] {
					expectNotFound(t, v, k, k, n.Size)
				} else {
					expectRead(t, v, n)
				}
			}
		}
		if err := v.Check(); err != nil {
			t.Fatal(err)
		}
	}
	check(v)
	t.Logf("%d photos written during compactions", len(written))
	v.Close()
	v2 := reopen(t, fs, 31)
	defer v2.Close()
	check(v2)
}

// TestCompactCrashAtRandomMoments takes power-cut clones of the file
// system at random moments during compactions (with writes going on): each
// clone opens to a complete volume holding every write acknowledged before
// the clone was taken.
func TestCompactCrashAtRandomMoments(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 0))
	fs := memFS(t)
	v := create(t, fs, 32, Options{})
	defer v.Close()
	var mu sync.Mutex
	live := map[uint64]bool{} // acknowledged and not deleted
	for k := uint64(1); k <= 400; k++ {
		mustWrite(t, v, photo(k, k))
		live[k] = true
		if k%2 == 0 {
			if _, err := v.Delete(context.Background(), k, k, needle.SizeAll); err != nil {
				t.Fatal(err)
			}
			delete(live, k)
		}
	}
	type snapshot struct {
		fs   *vfs.MemFS
		keys []uint64
	}
	var snaps []snapshot
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 4; i++ {
			if _, err := v.Compact(context.Background(), CompactOptions{}); err != nil {
				t.Error(err)
			}
		}
	}()
	next := uint64(10_000)
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		next++
		mustWrite(t, v, photo(next, next))
		mu.Lock()
		live[next] = true
		// The first write always takes one: the compactions may all end
		// before a later one (a fast machine, or a small volume).
		if len(snaps) == 0 || rnd.IntN(3) == 0 {
			keys := make([]uint64, 0, len(live))
			for k := range live {
				keys = append(keys, k)
			}
			snaps = append(snaps, snapshot{fs.CrashCloneTorn(rnd.Uint64()), keys})
		}
		mu.Unlock()
	}
	for i, s := range snaps {
		cv := reopen(t, s.fs, 32)
		for _, k := range s.keys {
			for _, n := range photo(k, k) {
				if _, _, err := cv.Read(k, k, n.Size, nil); err != nil {
					t.Fatalf("snapshot %d: key %d size %v lost: %v", i, k, n.Size, err)
				}
			}
		}
		cv.Close()
	}
	t.Logf("%d power-cut snapshots verified", len(snaps))
}

func TestCompactSealsReadOnly(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 33, Options{})
	mustWrite(t, v, photo(1, 1))
	if _, err := v.Compact(context.Background(), CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	if s, _ := v.State(); s != StateWritable {
		t.Fatalf("writable volume became %v", s)
	}
	if err := v.MarkReadOnly(context.Background(), "full"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Compact(context.Background(), CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	if s, _ := v.State(); s != StateSealed {
		t.Fatalf("compacted read-only volume is %v, want sealed", s)
	}
	// Marking a sealed volume read-only again keeps it sealed, across a
	// restart too.
	if err := v.MarkReadOnly(context.Background(), "again"); err != nil {
		t.Fatal(err)
	}
	if s, _ := v.State(); s != StateSealed {
		t.Fatalf("sealed volume marked read-only is %v", s)
	}
	v.Close()
	v = reopen(t, fs, 33)
	defer v.Close()
	if s, _ := v.State(); s != StateSealed {
		t.Fatalf("after restart: %v", s)
	}
	expectRead(t, v, photo(1, 1)[3])
}

// TestCompactKeepsChecksums: needles of a batch copied whole keep their
// bytes, so their checksums (ETags) do not change; a batch broken by a
// delete is re-encoded; and the compacted file's batches are well formed:
// a scan without the idx finds every live needle, and an idx rebuilt from
// the file is the one compaction wrote.
func TestCompactKeepsChecksums(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 34, Options{})
	sums := map[[2]uint64]uint64{}
	var all [][]*needle.Needle
	for k := uint64(1); k <= 30; k++ {
		ns := photo(k, k)
		mustWrite(t, v, ns)
		for _, n := range ns {
			sums[[2]uint64{k, uint64(n.Size)}] = n.Checksum
		}
		all = append(all, ns)
	}
	// Photo 5 loses its last size, photo 6 its first, photo 7 one in the
	// middle; 8 is deleted whole.
	for _, d := range []struct {
		key  uint64
		size needle.SizeCode
	}{{5, needle.SizeLarge}, {6, needle.SizeThumb}, {7, needle.SizeSmall}, {8, needle.SizeAll}} {
		if _, err := v.Delete(context.Background(), d.key, d.key, d.size); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.Compact(context.Background(), CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	changed := 0
	for _, ns := range all {
		for _, n := range ns {
			got, _, err := v.Read(n.Key, n.Cookie, n.Size, nil)
			deleted := n.Key == 8 || (n.Key == 5 && n.Size == needle.SizeLarge) ||
				(n.Key == 6 && n.Size == needle.SizeThumb) || (n.Key == 7 && n.Size == needle.SizeSmall)
			if deleted {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("deleted key %d size %v: %v", n.Key, n.Size, err)
				}
				continue
			}
			if err != nil || string(got.Data) != string(n.Data) {
				t.Fatalf("key %d size %v: %v", n.Key, n.Size, err)
			}
			if got.Checksum != sums[[2]uint64{n.Key, uint64(n.Size)}] {
				changed++
				if n.Key != 5 && n.Key != 7 {
					t.Fatalf("key %d size %v: checksum changed though its batch was copied whole", n.Key, n.Size)
				}
			}
		}
	}
	if changed == 0 {
		t.Fatal("no needle of a broken batch was re-encoded")
	}
	v.Close()
	idx := fileBytes(t, fs, IdxPath(testDir, 34))
	if _, err := Reindex(context.Background(), DatPath(testDir, 34), fs); err != nil {
		t.Fatal(err)
	}
	if got := fileBytes(t, fs, IdxPath(testDir, 34)); string(got) != string(idx) {
		t.Fatal("an idx rebuilt from the compacted file differs from the one compaction wrote")
	}
	if err := fs.Remove(IdxPath(testDir, 34)); err != nil {
		t.Fatal(err)
	}
	v = reopen(t, fs, 34)
	defer v.Close()
	if got := v.Status().Images; got != 30*4-4-3 {
		t.Fatalf("%d images after a scan of the compacted file, want %d", got, 30*4-4-3)
	}
}

// TestCompactSwapFailures fails each step of the compaction swap (the idx
// rename, the .dat rename, the directory sync) and cuts the power between
// them, with torn writes: the volume keeps serving every acknowledged
// needle, and every power-cut image opens to the old or the new volume,
// whole.
func TestCompactSwapFailures(t *testing.T) {
	type cut struct {
		name string
		fs   *vfs.MemFS
	}
	steps := []struct {
		name string
		op   errorfs.OpKind
		path string // substring of the op's new path (rename) or path
	}{
		{"idx rename", errorfs.OpRename, ".idx"},
		{"dat rename", errorfs.OpRename, ".dat"},
		{"directory sync", errorfs.OpSyncDir, testDir},
	}
	for _, step := range steps {
		for _, fail := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/fail %v", step.name, fail), func(t *testing.T) {
				seed := rand.Uint64()
				t.Logf("torn-write seed %d", seed)
				rnd := rand.New(rand.NewPCG(seed, 1))
				mem := memFS(t)
				var cuts []cut
				var armed atomic.Bool
				hook := errorfs.InjectorFunc(func(op errorfs.Op) error {
					if !armed.Load() || op.Kind != step.op {
						return nil
					}
					target := op.Path
					if op.Kind == errorfs.OpRename {
						target = op.NewPath
						if strings.HasSuffix(target, compactSuffix) || !strings.HasSuffix(target, step.path) {
							return nil
						}
					} else if !strings.Contains(target, step.path) {
						return nil
					}
					// Power cuts just before this step: with the directory
					// as last synced, and as a journal that had already
					// committed the earlier renames would leave it.
					cuts = append(cuts, cut{"before " + step.name, mem.CrashCloneTorn(rnd.Uint64())})
					if err := mem.SyncDir(testDir); err != nil {
						return err
					}
					cuts = append(cuts, cut{"before " + step.name + ", earlier renames durable", mem.CrashCloneTorn(rnd.Uint64())})
					if fail {
						return syscall.EIO
					}
					return nil
				})
				fs := errorfs.Wrap(mem, hook)
				v := create(t, fs, 40, Options{})
				var keep [][]*needle.Needle
				for k := uint64(1); k <= 60; k++ {
					ns := photo(k, k)
					mustWrite(t, v, ns)
					if k%3 == 0 {
						if _, err := v.Delete(context.Background(), k, k, needle.SizeAll); err != nil {
							t.Fatal(err)
						}
						continue
					}
					keep = append(keep, ns)
				}
				armed.Store(true)
				_, err := v.Compact(context.Background(), CompactOptions{})
				armed.Store(false)
				if fail && step.op == errorfs.OpRename && err == nil {
					t.Fatal("compaction with a failed rename succeeded")
				}
				if len(cuts) == 0 {
					t.Fatal("the swap never reached the step")
				}
				// A failed directory sync leaves the renames' durability
				// unknown: the volume serves on but takes no more writes.
				if st, _ := v.State(); (fail && step.op == errorfs.OpSyncDir) != (st == StateFailed) {
					t.Fatalf("state %v after the swap", st)
				}
				for _, ns := range keep {
					for _, n := range ns {
						expectRead(t, v, n)
					}
				}
				if err := v.Check(); err != nil {
					t.Fatal(err)
				}
				cuts = append(cuts, cut{"after the swap", mem.CrashCloneTorn(rnd.Uint64())})
				v.Close()
				cuts = append(cuts, cut{"clean restart", mem})
				for _, c := range cuts {
					cv, err := Open(context.Background(), testDir, 40, Options{FS: c.fs})
					if err != nil {
						t.Fatalf("%s: open: %v", c.name, err)
					}
					if err := cv.Check(); err != nil {
						t.Fatalf("%s: %v", c.name, err)
					}
					if gen := cv.Superblock().Generation; gen > 1 {
						t.Fatalf("%s: generation %d", c.name, gen)
					}
					for _, ns := range keep {
						for _, n := range ns {
							expectRead(t, cv, n)
						}
					}
					if got := cv.Status().Images; got != 4*len(keep) {
						t.Fatalf("%s: %d images, want %d", c.name, got, 4*len(keep))
					}
					cv.Close()
				}
			})
		}
	}
}
