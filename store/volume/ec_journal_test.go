package volume

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"slices"
	"testing"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// readFile returns the bytes of path in fs.
func readFile(t testing.TB, fs vfs.FS, path string) []byte {
	t.Helper()
	f, err := fs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, _ := f.Size()
	b := make([]byte, size)
	if err := readFull(f, b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// expectDeleted checks that every needle of gone reads as not found and
// every other live needle of f reads.
func (f *ecFixture) expectDeleted(t testing.TB, e *ECVolume, gone map[[2]uint64]bool) {
	t.Helper()
	for _, n := range f.live {
		_, _, err := e.Read(context.Background(), n.Key, n.Cookie, n.Size, nil)
		if gone[liveKey(n.Key, n.Size)] {
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("deleted key %x size %v: read gives %v", n.Key, n.Size, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("live key %x size %v: %v", n.Key, n.Size, err)
		}
	}
}

// TestECJournalsConvergeToUnion: three holders take different deletes (some
// the same); after each merges the others' journals, all three hold the
// same set, digest and index, and keep it across a reopen.
func TestECJournalsConvergeToUnion(t *testing.T) {
	ctx := context.Background()
	f := sealedVolume(t, 21, 10)
	f.encode(t, f.fs)
	fss := []*vfs.MemFS{f.fs.CrashClone(), f.fs.CrashClone(), f.fs.CrashClone()}
	var vols []*ECVolume
	for _, fs := range fss {
		vols = append(vols, openEC(t, fs))
	}
	gone := map[[2]uint64]bool{}
	del := func(h int, n *needle.Needle, size needle.SizeCode) {
		t.Helper()
		if _, err := vols[h].Delete(ctx, n.Key, n.Cookie, size); err != nil {
			t.Fatalf("holder %d: delete %x: %v", h, n.Key, err)
		}
		for _, m := range f.live {
			if m.Key == n.Key && (size == needle.SizeAll || m.Size == size) {
				gone[liveKey(m.Key, m.Size)] = true
			}
		}
	}
	del(0, f.live[0], needle.SizeAll)
	del(1, f.live[5], f.live[5].Size)
	del(1, f.live[0], needle.SizeAll) // the same delete on two holders
	del(2, f.live[9], needle.SizeAll)
	del(2, f.live[13], f.live[13].Size)
	if a, b := vols[0].JournalDigest(), vols[1].JournalDigest(); a == b {
		t.Fatalf("holders with different deletes report the same digest %+v", a)
	}
	var all [][]ECDelete
	for _, e := range vols {
		d, err := e.JournalDeletes()
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, d)
	}
	wantAdded := []int{3, 2, 2}
	for h, e := range vols {
		added := 0
		for o := range vols {
			if o != h {
				n, err := e.MergeJournal(ctx, all[o])
				if err != nil {
					t.Fatal(err)
				}
				added += n
			}
		}
		if added != wantAdded[h] {
			t.Fatalf("holder %d added %d deletes, want %d", h, added, wantAdded[h])
		}
	}
	want := vols[0].JournalDigest()
	if want.Count != 4 {
		t.Fatalf("union of the journals holds %d deletes, want 4", want.Count)
	}
	for h, e := range vols {
		if got := e.JournalDigest(); got != want {
			t.Fatalf("holder %d digest %+v, holder 0 %+v", h, got, want)
		}
		f.expectDeleted(t, e, gone)
		// Merging again adds nothing.
		if n, err := e.MergeJournal(ctx, all[(h+1)%3]); err != nil || n != 0 {
			t.Fatalf("second merge added %d: %v", n, err)
		}
		e.Close()
	}
	for h, fs := range fss {
		e := openEC(t, fs)
		if got := e.JournalDigest(); got != want {
			t.Fatalf("holder %d reopened with digest %+v, want %+v", h, got, want)
		}
		if st := e.Status(); st.Deletes != 4 || st.JournalDigest != want.Sum {
			t.Fatalf("holder %d status %+v", h, st)
		}
		f.expectDeleted(t, e, gone)
	}
}

// TestECJournalDamagedRecord: a damaged record followed by intact ones is
// damage, not a torn append: the intact records after it are kept (never
// undoing their deletes), the damaged one is counted, and the journal is
// rewritten so the next open is clean.
func TestECJournalDamagedRecord(t *testing.T) {
	ctx := context.Background()
	f := sealedVolume(t, 22, 8)
	f.encode(t, f.fs)
	e := openEC(t, f.fs)
	for _, n := range f.live[:3] {
		if _, err := e.Delete(ctx, n.Key, n.Cookie, n.Size); err != nil {
			t.Fatal(err)
		}
	}
	e.Close()
	path := ECJournalPath(testDir, ecVid)
	b := readFile(t, f.fs, path)
	b[ecjRecordSize+ecjRecordSize+3] ^= 0x40 // the second record
	if err := vfs.WriteFileAtomic(f.fs, path, b); err != nil {
		t.Fatal(err)
	}
	e = openEC(t, f.fs)
	st := e.Status()
	if st.JournalDamaged != 1 || st.Deletes != 2 {
		t.Fatalf("damaged journal opened with %d deletes, %d damaged", st.Deletes, st.JournalDamaged)
	}
	for i, n := range f.live[:3] {
		_, _, err := e.Read(ctx, n.Key, n.Cookie, n.Size, nil)
		if wantGone := i != 1; wantGone != errors.Is(err, ErrNotFound) {
			t.Fatalf("needle %d after the damage: %v", i, err)
		}
	}
	e.Close()
	e = openEC(t, f.fs)
	if st := e.Status(); st.JournalDamaged != 0 || st.Deletes != 2 {
		t.Fatalf("rewritten journal reopened with %d deletes, %d damaged", st.Deletes, st.JournalDamaged)
	}
}

// TestECJournalMergeCrashAtEveryStep cuts the power at every step of a
// merge (plain and torn write-back): the journal reopens holding at least
// what it held and at most the union, and exactly the needles it journals
// are gone.
func TestECJournalMergeCrashAtEveryStep(t *testing.T) {
	ctx := context.Background()
	f := sealedVolume(t, 23, 10)
	f.encode(t, f.fs)
	e := openEC(t, f.fs)
	if _, err := e.Delete(ctx, f.live[0].Key, f.live[0].Cookie, needle.SizeAll); err != nil {
		t.Fatal(err)
	}
	before := e.JournalDigest()
	e.Close()
	var incoming []ECDelete
	for _, n := range f.live[4:30] {
		incoming = append(incoming, ECDelete{Key: n.Key, Cookie: n.Cookie, Size: n.Size})
	}
	base := f.fs.CrashClone()
	merge := func(fs vfs.FS) error {
		e, err := OpenEC(ctx, testDir, ecVid, ECOptions{FS: fs})
		if err != nil {
			return err
		}
		defer e.Close()
		_, err = e.MergeJournal(ctx, incoming)
		return err
	}
	total := mutations(base.CrashClone(), func(fs vfs.FS) {
		if err := merge(fs); err != nil {
			t.Fatal(err)
		}
	})
	for step := 0; step <= total; step++ {
		for torn := 0; torn < 3; torn++ {
			mem := base.CrashClone()
			err := merge(crashAfter(mem, step))
			if step == total && err != nil {
				t.Fatalf("merge with every step allowed: %v", err)
			}
			crashed := mem.CrashClone()
			if torn > 0 {
				crashed = mem.CrashCloneTorn(uint64(step*7 + torn))
			}
			e, err := OpenEC(ctx, testDir, ecVid, ECOptions{FS: crashed})
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			got, err := e.JournalDeletes()
			if err != nil {
				t.Fatal(err)
			}
			if !e.HasDelete(ECDelete{Key: f.live[0].Key, Cookie: f.live[0].Cookie, Size: needle.SizeAll}) {
				t.Fatalf("step %d: the delete journaled before the merge is gone", step)
			}
			if d := e.JournalDigest(); d.Count < before.Count || int(d.Count) > 1+len(incoming) {
				t.Fatalf("step %d: %d deletes", step, d.Count)
			}
			if step == total && int(e.JournalDigest().Count) != 1+len(incoming) {
				t.Fatalf("finished merge left %d deletes", e.JournalDigest().Count)
			}
			gone := map[[2]uint64]bool{}
			for _, d := range got {
				if d.Key == f.live[0].Key {
					for _, n := range f.live[:4] {
						gone[liveKey(n.Key, n.Size)] = true
					}
					continue
				}
				if !slices.Contains(incoming, d) {
					t.Fatalf("step %d: journal holds %+v, never merged", step, d)
				}
				gone[liveKey(d.Key, d.Size)] = true
			}
			f.expectDeleted(t, e, gone)
			e.Close()
		}
	}
}

// ecxSource serves the EC files of an open EC volume, as EcShardCopy does.
type ecxSource struct{ e *ECVolume }

func (s ecxSource) CopyECFile(ctx context.Context, vid uint32, name string, fn func([]byte, int64, int64) error) error {
	return s.e.CopyFile(ctx, name, fn)
}

// TestECIndexRefetchedAndRegenerated: a lost or damaged ecx is never loaded
// silently; it comes back from another holder, or, with every copy gone,
// from the shards, byte-identical, even with 4 shards missing and deletes
// journaled.
func TestECIndexRefetchedAndRegenerated(t *testing.T) {
	ctx := context.Background()
	f := sealedVolume(t, 24, 12)
	f.encode(t, f.fs)
	ecx := readFile(t, f.fs, ECIndexPath(testDir, ecVid))
	e := openEC(t, f.fs)
	gone := map[[2]uint64]bool{}
	for _, n := range f.live[:2] {
		if _, err := e.Delete(ctx, n.Key, n.Cookie, n.Size); err != nil {
			t.Fatal(err)
		}
		gone[liveKey(n.Key, n.Size)] = true
	}
	e.Close()
	holder := f.fs.CrashClone()
	other := openEC(t, f.fs)

	// Damaged: refused at open, and by ECIndexOK.
	damaged := slices.Clone(ecx)
	damaged[ECHeaderSize+5*idxRecordSize+2] ^= 1
	if err := vfs.WriteFileAtomic(holder, ECIndexPath(testDir, ecVid), damaged); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenEC(ctx, testDir, ecVid, ECOptions{FS: holder}); !IsCorruption(err) {
		t.Fatalf("damaged ecx opened: %v", err)
	}
	if err := ECIndexOK(ctx, holder, testDir, ecVid); !IsCorruption(err) {
		t.Fatalf("ECIndexOK on a damaged ecx: %v", err)
	}
	// Refetched from another holder.
	if err := InstallECIndex(ctx, holder, testDir, ecVid, ecxSource{other}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, holder, ECIndexPath(testDir, ecVid)); !bytes.Equal(got, ecx) {
		t.Fatal("refetched ecx differs from the original")
	}
	e = openEC(t, holder)
	f.expectDeleted(t, e, gone)
	e.Close()

	// A copy that does not check is refused, the file here left alone.
	if err := holder.Remove(ECIndexPath(testDir, ecVid)); err != nil {
		t.Fatal(err)
	}
	if err := InstallECIndex(ctx, holder, testDir, ecVid, badSource{damaged}); !IsCorruption(err) {
		t.Fatalf("a damaged copy installed: %v", err)
	}
	if err := ECIndexOK(ctx, holder, testDir, ecVid); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after a refused copy: %v", err)
	}

	// Every copy lost, 4 shards too (2 data, 2 parity): regenerated from
	// the shards, byte-identical.
	for _, i := range []int{0, 7, 10, 13} {
		if err := holder.Remove(ECShardPath(testDir, ecVid, i)); err != nil {
			t.Fatal(err)
		}
	}
	res, err := RegenerateECX(ctx, testDir, ecVid, ECOptions{FS: holder})
	if err != nil {
		t.Fatal(err)
	}
	if res.Needles != len(f.live) || res.Tombstones == 0 {
		t.Fatalf("regenerated %+v, want %d needles and the pre-encode tombstones", res, len(f.live))
	}
	if got := readFile(t, holder, ECIndexPath(testDir, ecVid)); !bytes.Equal(got, ecx) {
		t.Fatal("regenerated ecx differs from the original")
	}
	e = openEC(t, holder)
	f.expectDeleted(t, e, gone)
}

// badSource serves fixed bytes as the ecx.
type badSource struct{ b []byte }

func (s badSource) CopyECFile(_ context.Context, _ uint32, _ string, fn func([]byte, int64, int64) error) error {
	return fn(s.b, 0, int64(len(s.b)))
}

// TestECRegenerateSkipsDamagedShard: a data shard whose bytes are damaged
// is found by the rows' parity and left out, so the regenerated ecx still
// equals the original.
func TestECRegenerateSkipsDamagedShard(t *testing.T) {
	ctx := context.Background()
	f := sealedVolume(t, 25, 8)
	f.encode(t, f.fs)
	ecx := readFile(t, f.fs, ECIndexPath(testDir, ecVid))
	path := ECShardPath(testDir, ecVid, 1)
	b := readFile(t, f.fs, path)
	for i := ECHeaderSize + 10; i < len(b); i += 97 {
		b[i] ^= 0x5a
	}
	if err := vfs.WriteFileAtomic(f.fs, path, b); err != nil {
		t.Fatal(err)
	}
	if err := f.fs.Remove(ECIndexPath(testDir, ecVid)); err != nil {
		t.Fatal(err)
	}
	res, err := RegenerateECX(ctx, testDir, ecVid, ECOptions{FS: f.fs})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.SkippedShards, []int{1}) {
		t.Fatalf("skipped shards %v, want [1]", res.SkippedShards)
	}
	if got := readFile(t, f.fs, ECIndexPath(testDir, ecVid)); !bytes.Equal(got, ecx) {
		t.Fatal("regenerated ecx differs from the original")
	}
	// Without any shard there is nothing to regenerate from.
	empty := memFS(t)
	if _, err := RegenerateECX(ctx, testDir, ecVid, ECOptions{FS: empty}); !errors.Is(err, ErrNoShards) {
		t.Fatalf("regenerate without shards: %v", err)
	}
}

// TestECRegenerateCrashAtEveryStep: a power cut at any step of the
// regeneration leaves no ecx or the whole, correct one.
func TestECRegenerateCrashAtEveryStep(t *testing.T) {
	ctx := context.Background()
	f := sealedVolume(t, 26, 6)
	f.encode(t, f.fs)
	ecx := readFile(t, f.fs, ECIndexPath(testDir, ecVid))
	if err := f.fs.Remove(ECIndexPath(testDir, ecVid)); err != nil {
		t.Fatal(err)
	}
	f.fs.SyncDir(testDir)
	base := f.fs.CrashClone()
	total := mutations(base.CrashClone(), func(fs vfs.FS) {
		if _, err := RegenerateECX(ctx, testDir, ecVid, ECOptions{FS: fs}); err != nil {
			t.Fatal(err)
		}
	})
	if total == 0 {
		t.Fatal("regeneration changed nothing")
	}
	for step := 0; step <= total; step++ {
		mem := base.CrashClone()
		_, err := RegenerateECX(ctx, testDir, ecVid, ECOptions{FS: crashAfter(mem, step)})
		if step == total && err != nil {
			t.Fatalf("regeneration with every step allowed: %v", err)
		}
		crashed := mem.CrashCloneTorn(uint64(step))
		if _, err := crashed.Stat(ECIndexPath(testDir, ecVid)); err != nil {
			if step == total {
				t.Fatal("finished regeneration left no ecx")
			}
			continue
		}
		if got := readFile(t, crashed, ECIndexPath(testDir, ecVid)); !bytes.Equal(got, ecx) {
			t.Fatalf("step %d: an ecx that differs from the original survived", step)
		}
		e, err := OpenEC(ctx, testDir, ecVid, ECOptions{FS: crashed})
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		f.expectECReads(t, e)
		e.Close()
	}
}

// TestECIndexInstallCrashAtEveryStep: a power cut at any step of a refetch
// leaves the damaged ecx (never loaded) or the whole, correct one.
func TestECIndexInstallCrashAtEveryStep(t *testing.T) {
	ctx := context.Background()
	f := sealedVolume(t, 27, 6)
	f.encode(t, f.fs)
	ecx := readFile(t, f.fs, ECIndexPath(testDir, ecVid))
	src := openEC(t, f.fs.CrashClone())
	damaged := slices.Clone(ecx)
	damaged[ECHeaderSize+1] ^= 0x20
	if err := vfs.WriteFileAtomic(f.fs, ECIndexPath(testDir, ecVid), damaged); err != nil {
		t.Fatal(err)
	}
	base := f.fs.CrashClone()
	total := mutations(base.CrashClone(), func(fs vfs.FS) {
		if err := InstallECIndex(ctx, fs, testDir, ecVid, ecxSource{src}); err != nil {
			t.Fatal(err)
		}
	})
	for step := 0; step <= total; step++ {
		mem := base.CrashClone()
		err := InstallECIndex(ctx, crashAfter(mem, step), testDir, ecVid, ecxSource{src})
		if step == total && err != nil {
			t.Fatalf("install with every step allowed: %v", err)
		}
		crashed := mem.CrashCloneTorn(uint64(step))
		got := readFile(t, crashed, ECIndexPath(testDir, ecVid))
		switch {
		case bytes.Equal(got, ecx):
			e, err := OpenEC(ctx, testDir, ecVid, ECOptions{FS: crashed})
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			f.expectECReads(t, e)
			e.Close()
		case step == total:
			t.Fatal("finished install left another ecx")
		case bytes.Equal(got, damaged):
			if _, err := OpenEC(ctx, testDir, ecVid, ECOptions{FS: crashed}); !IsCorruption(err) {
				t.Fatalf("step %d: the damaged ecx opened: %v", step, err)
			}
		default:
			t.Fatalf("step %d: an ecx that is neither the old nor the new one", step)
		}
	}
}

// TestRepairECJournalHeader: a journal whose header is damaged cannot be
// loaded; RepairECJournal rewrites it with a fresh header and every intact
// record, and leaves a sound journal alone.
func TestRepairECJournalHeader(t *testing.T) {
	ctx := context.Background()
	f := sealedVolume(t, 28, 6)
	f.encode(t, f.fs)
	e := openEC(t, f.fs)
	for _, n := range f.live[:3] {
		if _, err := e.Delete(ctx, n.Key, n.Cookie, n.Size); err != nil {
			t.Fatal(err)
		}
	}
	want := e.JournalDigest()
	e.Close()
	if kept, err := RepairECJournal(ctx, f.fs, testDir, ecVid); err != nil || kept != 0 {
		t.Fatalf("repair of a sound journal: %d %v", kept, err)
	}
	path := ECJournalPath(testDir, ecVid)
	b := readFile(t, f.fs, path)
	b[2] ^= 0xff
	if err := vfs.WriteFileAtomic(f.fs, path, b); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenEC(ctx, testDir, ecVid, ECOptions{FS: f.fs}); !errors.Is(err, ErrNotEC) {
		t.Fatalf("journal with a damaged header opened: %v", err)
	}
	kept, err := RepairECJournal(ctx, f.fs, testDir, ecVid)
	if err != nil || kept != 3 {
		t.Fatalf("repair: %d %v", kept, err)
	}
	e = openEC(t, f.fs)
	if got := e.JournalDigest(); got != want {
		t.Fatalf("repaired journal %+v, want %+v", got, want)
	}
}

// TestECDeleteCrashAtEveryStep cuts the power at every step of a run of
// deletes (plain and torn write-back): every acknowledged delete survives,
// a torn last record is cut as a tear, never taken for damage, and the
// volume serves exactly the needles its journal does not delete.
func TestECDeleteCrashAtEveryStep(t *testing.T) {
	ctx := context.Background()
	f := sealedVolume(t, 29, 6)
	f.encode(t, f.fs)
	base := f.fs.CrashClone()
	victims := f.live[:5]
	run := func(fs vfs.FS) (acked int, err error) {
		e, err := OpenEC(ctx, testDir, ecVid, ECOptions{FS: fs})
		if err != nil {
			return 0, err
		}
		defer e.Close()
		for _, n := range victims {
			if _, err := e.Delete(ctx, n.Key, n.Cookie, n.Size); err != nil {
				return acked, err
			}
			acked++
		}
		return acked, nil
	}
	total := mutations(base.CrashClone(), func(fs vfs.FS) {
		if _, err := run(fs); err != nil {
			t.Fatal(err)
		}
	})
	for step := 0; step <= total; step++ {
		for torn := 0; torn < 3; torn++ {
			mem := base.CrashClone()
			acked, err := run(crashAfter(mem, step))
			if step == total && err != nil {
				t.Fatalf("deletes with every step allowed: %v", err)
			}
			crashed := mem.CrashClone()
			if torn > 0 {
				crashed = mem.CrashCloneTorn(uint64(step*5 + torn))
			}
			e, err := OpenEC(ctx, testDir, ecVid, ECOptions{FS: crashed})
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			st := e.Status()
			if st.JournalDamaged != 0 {
				t.Fatalf("step %d: a torn append was taken for damage (%d records)", step, st.JournalDamaged)
			}
			if int(st.Deletes) < acked || int(st.Deletes) > acked+1 {
				t.Fatalf("step %d: %d deletes journaled, %d acknowledged", step, st.Deletes, acked)
			}
			gone := map[[2]uint64]bool{}
			for _, n := range victims[:st.Deletes] {
				gone[liveKey(n.Key, n.Size)] = true
			}
			f.expectDeleted(t, e, gone)
			e.Close()
		}
	}
}
