package volume

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/haybale/haybale/internal/vfs/errorfs"
	"github.com/haybale/haybale/needle"
)

// syncGate is an errorfs injector that, while armed, holds every fdatasync
// of a .dat file until the test answers it, and reports every .dat pwrite,
// so a test can stop the pipeline with one round on its way to the disk
// and watch what the committer does meanwhile.
type syncGate struct {
	armed     atomic.Bool
	syncs     chan chan error // each held fdatasync sends where its answer goes
	writes    chan errorfs.Op // every .dat pwrite while armed
	failWrite atomic.Int64    // while not 0, the pwrite at this offset fails with ENOSPC
	// While holdWrites is set, each .dat pwrite also waits for an answer
	// sent where it sends on heldWrites.
	holdWrites atomic.Bool
	heldWrites chan chan error
}

func newSyncGate() *syncGate {
	return &syncGate{syncs: make(chan chan error), writes: make(chan errorfs.Op, 1024), heldWrites: make(chan chan error)}
}

// MaybeError implements errorfs.Injector.
func (g *syncGate) MaybeError(op errorfs.Op) error {
	if !g.armed.Load() || !strings.HasSuffix(op.Path, ".dat") {
		return nil
	}
	switch op.Kind {
	case errorfs.OpSync:
		answer := make(chan error)
		g.syncs <- answer
		return <-answer
	case errorfs.OpWrite:
		g.writes <- op
		if g.holdWrites.Load() {
			answer := make(chan error)
			g.heldWrites <- answer
			if err := <-answer; err != nil {
				return err
			}
		}
		if off := g.failWrite.Load(); off != 0 && op.Off == off {
			return syscall.ENOSPC
		}
	}
	return nil
}

// await returns what ch delivers, and fails the test when nothing comes in
// a long while: the event it waits for never happens in the code under
// test.
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case x := <-ch:
		return x
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: never happened", what)
		panic("unreachable")
	}
}

// result is the outcome of a write or delete started in the background.
type result struct {
	done chan struct{} // closed once err is set
	err  error
}

// answered reports whether the operation has returned.
func (r *result) answered() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// wait returns the operation's error once it has returned.
func (r *result) wait(t *testing.T, what string) error {
	t.Helper()
	await(t, r.done, what)
	return r.err
}

// async runs op in the background.
func async(op func() error) *result {
	r := &result{done: make(chan struct{})}
	go func() {
		r.err = op()
		close(r.done)
	}()
	return r
}

// writeAsync starts v.Write(ns) in the background.
func writeAsync(v *Volume, ns []*needle.Needle) *result {
	return async(func() error {
		_, err := v.Write(context.Background(), ns)
		return err
	})
}

// expectAbsent checks that no needle of ns is visible.
func expectAbsent(t *testing.T, v *Volume, ns []*needle.Needle) {
	t.Helper()
	for _, n := range ns {
		if v.Has(n.Key, n.Size) {
			t.Fatalf("key %x size %v is visible before it is durable", n.Key, n.Size)
		}
		expectNotFound(t, v, n.Key, n.Cookie, n.Size)
	}
}

// expectWholeOrAbsent checks that a batch that was never acknowledged
// either reads back whole or not at all.
func expectWholeOrAbsent(t *testing.T, v *Volume, ns []*needle.Needle) {
	t.Helper()
	if v.Has(ns[0].Key, ns[0].Size) {
		for _, n := range ns {
			expectRead(t, v, n)
		}
		return
	}
	for _, n := range ns {
		expectNotFound(t, v, n.Key, n.Cookie, n.Size)
	}
}

// TestPipelineWritesNextRoundWhileSyncing holds the fdatasync of one round
// and checks that the next round is written meanwhile, that neither round
// is visible or acknowledged before its own fdatasync returns, that the
// rounds are acknowledged in order, and that a power cut at each step keeps
// every acknowledged batch and leaves the others whole or absent.
func TestPipelineWritesNextRoundWhileSyncing(t *testing.T) {
	mem := memFS(t)
	gate := newSyncGate()
	v := create(t, errorfs.Wrap(mem, gate), 30, Options{})
	first := photo(1, 1)
	mustWrite(t, v, first)
	sizeBefore := v.Status().Size

	gate.armed.Store(true)
	a, b := photo(2, 2), photo(3, 3)
	doneA := writeAsync(v, a)
	await(t, gate.writes, "the pwrite of round A")
	syncA := await(t, gate.syncs, "the fdatasync of round A")
	expectAbsent(t, v, a)

	doneB := writeAsync(v, b)
	wb := await(t, gate.writes, "the pwrite of round B while round A is syncing")
	if want := sizeBefore + encodedLen(a); wb.Off != want {
		t.Fatalf("round B written at %d, want %d (right after round A)", wb.Off, want)
	}
	if doneA.answered() || doneB.answered() {
		t.Fatal("a write was acknowledged before its fdatasync returned")
	}
	expectAbsent(t, v, a)
	expectAbsent(t, v, b)
	if got := v.Status().Size; got != sizeBefore {
		t.Fatalf("size %d while round A syncs, want the durable %d", got, sizeBefore)
	}
	crashed := reopen(t, mem.CrashCloneTorn(rand.Uint64()), 30)
	for _, n := range first {
		expectRead(t, crashed, n)
	}
	expectWholeOrAbsent(t, crashed, a)
	expectWholeOrAbsent(t, crashed, b)
	crashed.Close()

	syncA <- nil
	if err := doneA.wait(t, "the acknowledgement of round A"); err != nil {
		t.Fatal(err)
	}
	// Round B's own fdatasync began after its pwrite; until it returns,
	// B is neither acknowledged nor visible.
	syncB := await(t, gate.syncs, "the fdatasync of round B")
	for _, n := range a {
		expectRead(t, v, n)
	}
	if doneB.answered() {
		t.Fatal("round B acknowledged before its own fdatasync returned")
	}
	expectAbsent(t, v, b)
	crashed = reopen(t, mem.CrashCloneTorn(rand.Uint64()), 30)
	for _, n := range append(append([]*needle.Needle(nil), first...), a...) {
		expectRead(t, crashed, n)
	}
	expectWholeOrAbsent(t, crashed, b)
	crashed.Close()

	syncB <- nil
	if err := doneB.wait(t, "the acknowledgement of round B"); err != nil {
		t.Fatal(err)
	}
	gate.armed.Store(false)
	for _, n := range b {
		expectRead(t, v, n)
	}
	if err := v.Check(); err != nil {
		t.Fatal(err)
	}
	crashed = reopen(t, mem.CrashCloneTorn(rand.Uint64()), 30)
	defer crashed.Close()
	for _, ns := range [][]*needle.Needle{first, a, b} {
		for _, n := range ns {
			expectRead(t, crashed, n)
		}
	}
	v.Close()
}

// encodedLen returns the bytes a batch of needles takes in the volume.
func encodedLen(ns []*needle.Needle) int64 {
	var total int64
	for _, n := range ns {
		total += int64(needle.EncodedLen(len(n.Data)))
	}
	return total
}

// TestPipelineSyncFailure fails the fdatasync of a round while the next
// round is already written: both rounds' writers get the error, no later
// fdatasync is trusted, the volume turns failed and refuses writes and
// deletes as after any failed fdatasync, what was acknowledged before stays
// readable, and after a power cut each failed batch is whole or absent.
func TestPipelineSyncFailure(t *testing.T) {
	mem := memFS(t)
	gate := newSyncGate()
	counter := &errorfs.Counter{}
	v := create(t, errorfs.Wrap(mem, errorfs.Chain(counter, gate)), 31, Options{})
	before := photo(1, 1)
	mustWrite(t, v, before)

	gate.armed.Store(true)
	a, b := photo(2, 2), photo(3, 3)
	doneA := writeAsync(v, a)
	await(t, gate.writes, "the pwrite of round A")
	syncA := await(t, gate.syncs, "the fdatasync of round A")
	doneB := writeAsync(v, b)
	await(t, gate.writes, "the pwrite of round B while round A is syncing")
	syncsBefore := counter.Count(errorfs.OpSync)
	syncA <- syscall.EIO

	errA := doneA.wait(t, "the answer to round A")
	errB := doneB.wait(t, "the answer to round B")
	for name, err := range map[string]error{"A": errA, "B": errB} {
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("round %s after a failed fdatasync: %v, want the EIO", name, err)
		}
	}
	if n := counter.Count(errorfs.OpSync) - syncsBefore; n != 0 {
		t.Fatalf("%d fdatasyncs after the failed one: round B was synced and could have been acknowledged", n)
	}
	gate.armed.Store(false)
	if state, _ := v.State(); state != StateFailed {
		t.Fatalf("state %v after a failed fdatasync, want failed", state)
	}
	if _, err := v.Write(context.Background(), photo(4, 4)); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to the failed volume: %v, want ErrReadOnly", err)
	}
	if _, err := v.Delete(context.Background(), 1, 1, needle.SizeAll); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("delete on the failed volume: %v, want ErrReadOnly", err)
	}
	for _, n := range before {
		expectRead(t, v, n)
	}
	expectAbsent(t, v, a)
	expectAbsent(t, v, b)
	if err := v.Check(); err != nil {
		t.Fatal(err)
	}
	v.Close()

	seed := rand.Uint64()
	t.Logf("torn-write seed %d", seed)
	v = reopen(t, mem.CrashCloneTorn(seed), 31)
	defer v.Close()
	for _, n := range before {
		expectRead(t, v, n)
	}
	expectWholeOrAbsent(t, v, a)
	expectWholeOrAbsent(t, v, b)
	expectNotFound(t, v, 4, 4, needle.SizeThumb)
}

// TestPipelineWriteFailureBehindSync fails the pwrite of a round while the
// round before is syncing: only that round fails, the round before is
// acknowledged, the failed bytes are cut off and the next round takes
// their place, and the volume stays writable.
func TestPipelineWriteFailureBehindSync(t *testing.T) {
	mem := memFS(t)
	gate := newSyncGate()
	v := create(t, errorfs.Wrap(mem, gate), 32, Options{})
	before := photo(1, 1)
	mustWrite(t, v, before)
	sizeBefore := v.Status().Size

	a, b, c := photo(2, 2), photo(3, 3), photo(4, 4)
	endA := sizeBefore + encodedLen(a)
	gate.failWrite.Store(endA)
	gate.armed.Store(true)
	doneA := writeAsync(v, a)
	await(t, gate.writes, "the pwrite of round A")
	syncA := await(t, gate.syncs, "the fdatasync of round A")
	doneB := writeAsync(v, b)
	if wb := await(t, gate.writes, "the pwrite of round B while round A is syncing"); wb.Off != endA {
		t.Fatalf("round B written at %d, want %d", wb.Off, endA)
	}
	gate.failWrite.Store(0)
	syncA <- nil
	if err := doneA.wait(t, "the acknowledgement of round A"); err != nil {
		t.Fatalf("round A failed with the round after it: %v", err)
	}
	if err := doneB.wait(t, "the answer to round B"); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("round B with a failed pwrite: %v, want ENOSPC", err)
	}
	if state, _ := v.State(); state != StateWritable {
		t.Fatalf("state %v after a failed pwrite, want writable", state)
	}
	if size, err := mem.Stat(DatPath(testDir, 32)); err != nil || size.Size() != endA {
		t.Fatalf("after the failed pwrite the .dat holds %v bytes (%v), want %d", size.Size(), err, endA)
	}
	doneC := writeAsync(v, c)
	if wc := await(t, gate.writes, "the pwrite of round C"); wc.Off != endA {
		t.Fatalf("round C written at %d, want %d (where the failed round was)", wc.Off, endA)
	}
	await(t, gate.syncs, "the fdatasync of round C") <- nil
	if err := doneC.wait(t, "the acknowledgement of round C"); err != nil {
		t.Fatal(err)
	}
	gate.armed.Store(false)
	for _, ns := range [][]*needle.Needle{before, a, c} {
		for _, n := range ns {
			expectRead(t, v, n)
		}
	}
	expectAbsent(t, v, b)
	if err := v.Check(); err != nil {
		t.Fatal(err)
	}
	v.Close()

	v = reopen(t, mem.CrashCloneTorn(rand.Uint64()), 32)
	defer v.Close()
	for _, ns := range [][]*needle.Needle{before, a, c} {
		for _, n := range ns {
			expectRead(t, v, n)
		}
	}
	expectAbsent(t, v, b)
}

// TestPipelineTombstoneBeforeWrite deletes a photo and writes it again
// while the round with the tombstone is syncing: the committer takes the
// rewrite while the tombstone is not yet in the index, refuses it with
// ErrDeleted, and answers it only after the delete; a write of another
// photo after it lands.
func TestPipelineTombstoneBeforeWrite(t *testing.T) {
	mem := memFS(t)
	gate := newSyncGate()
	v := create(t, errorfs.Wrap(mem, gate), 33, Options{})
	victim := photo(5, 5)
	mustWrite(t, v, victim)

	// Hold the tombstone's pwrite until the rewrite is queued behind it.
	gate.holdWrites.Store(true)
	gate.armed.Store(true)
	del := async(func() error {
		_, err := v.Delete(context.Background(), 5, 5, needle.SizeAll)
		return err
	})
	writeTomb := await(t, gate.heldWrites, "the pwrite of the tombstone")
	rewrite := writeAsync(v, []*needle.Needle{victim[0]})
	waitQueued(t, v, 1)
	gate.holdWrites.Store(false)
	writeTomb <- nil
	syncDel := await(t, gate.syncs, "the fdatasync of the tombstone")
	waitQueued(t, v, 0)
	if !v.Has(5, victim[0].Size) {
		t.Fatal("the photo left the index before its tombstone was durable")
	}

	other := photo(6, 6)
	doneOther := writeAsync(v, other)
	if rewrite.answered() || del.answered() {
		t.Fatal("answered before the tombstone's fdatasync returned")
	}
	syncDel <- nil
	if err := del.wait(t, "the acknowledgement of the delete"); err != nil {
		t.Fatal(err)
	}
	// The rewrite and the other photo may share a round, which is then
	// synced: answer every fdatasync until both have returned.
	for waitRewrite, waitOther := rewrite.done, doneOther.done; waitRewrite != nil || waitOther != nil; {
		select {
		case s := <-gate.syncs:
			s <- nil
		case <-waitRewrite:
			waitRewrite = nil
		case <-waitOther:
			waitOther = nil
		case <-time.After(20 * time.Second):
			t.Fatal("the rewrite or the other photo was never answered")
		}
	}
	if !errors.Is(rewrite.err, ErrDeleted) {
		t.Fatalf("rewrite of a photo whose delete was syncing: %v, want ErrDeleted", rewrite.err)
	}
	if doneOther.err != nil {
		t.Fatal(doneOther.err)
	}
	gate.armed.Store(false)
	for _, n := range victim {
		expectNotFound(t, v, n.Key, n.Cookie, n.Size)
	}
	for _, n := range other {
		expectRead(t, v, n)
	}
	if err := v.Check(); err != nil {
		t.Fatal(err)
	}
	v.Close()
	v = reopen(t, mem.CrashCloneTorn(rand.Uint64()), 33)
	defer v.Close()
	for _, n := range victim {
		expectNotFound(t, v, n.Key, n.Cookie, n.Size)
	}
	for _, n := range other {
		expectRead(t, v, n)
	}
}

// waitQueued waits until exactly n batches wait in the commit queue.
func waitQueued(t *testing.T, v *Volume, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		v.commit.mu.Lock()
		queued := len(v.commit.queue)
		v.commit.mu.Unlock()
		if queued == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d batches queued, never %d", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
}
