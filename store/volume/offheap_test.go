package volume

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/haybale/haybale/needle"
)

// settledMapped returns IndexMappedBytes once no cleanup of an index
// dropped earlier (by another test) is pending: after collections, when
// two readings agree.
func settledMapped() int64 {
	prev := int64(-1)
	for range 100 {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
		n := IndexMappedBytes()
		if n == prev {
			return n
		}
		prev = n
	}
	return prev
}

// writePhotos writes photos keys 1..n, 200 to a Write.
func writePhotos(t testing.TB, v *Volume, n int) {
	t.Helper()
	for k := 1; k <= n; {
		var batch []*needle.Needle
		for ; k <= n && len(batch) < 800; k++ {
			batch = append(batch, photo(uint64(k), uint64(k)*3)...)
		}
		mustWrite(t, v, batch)
	}
}

// lanePages returns the pages of every lane of ix.
func lanePages(ix *index) int {
	n := 0
	for ln := range ix.lanes {
		n += len(ix.lanes[ln].pages)
	}
	return n
}

// TestIndexMemoryFreedOnClose opens and closes a volume of three pages of
// records many times: every close unmaps what its open mapped, so the
// mapped memory does not grow with the cycles.
func TestIndexMemoryFreedOnClose(t *testing.T) {
	fs := memFS(t)
	const photos = 2*pageRecords + 100
	v := create(t, fs, 1, Options{})
	writePhotos(t, v, photos)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	base := settledMapped()
	for cycle := range 20 {
		v := reopen(t, fs, 1)
		v.mu.RLock()
		pages := lanePages(v.mu.index)
		v.mu.RUnlock()
		if pages != 3 {
			t.Fatalf("cycle %d: %d pages of records, want 3", cycle, pages)
		}
		if runtime.GOOS == "linux" {
			if got := IndexMappedBytes() - base; got < 3*pageBytes {
				t.Fatalf("cycle %d: %d bytes mapped for 3 pages of records, want at least %d", cycle, got, 3*pageBytes)
			}
		}
		expectRead(t, v, photo(photos, photos*3)[2])
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
		v.mu.RLock()
		pages = lanePages(v.mu.index)
		v.mu.RUnlock()
		if pages != 0 {
			t.Fatalf("cycle %d: %d pages still held after Close", cycle, pages)
		}
		if got := IndexMappedBytes(); got > base {
			t.Fatalf("cycle %d: %d bytes mapped after Close, %d before the open: the index leaked", cycle, got, base)
		}
	}
	// The counters Status reports survive the close.
	if st := v.Status(); st.Images != 4*photos {
		t.Errorf("Status after Close: %d images, want %d", st.Images, 4*photos)
	}
}

// TestIndexMemoryFreedByCompaction checks that the index compaction
// replaces is unmapped at the swap, and that reads during the compaction
// and after it are served from the new index.
func TestIndexMemoryFreedByCompaction(t *testing.T) {
	fs := memFS(t)
	const photos = pageRecords + 500
	v := create(t, fs, 1, Options{})
	defer v.Close()
	writePhotos(t, v, photos)
	for k := uint64(1); k <= photos; k += 2 {
		if _, err := v.Delete(context.Background(), k, k*3, needle.SizeAll); err != nil {
			t.Fatal(err)
		}
	}
	v.mu.RLock()
	old := v.mu.index
	v.mu.RUnlock()
	// The deletes' merges dropped the emptied records: one page is left.
	if lanePages(old) != 1 || old.tombs.len() != (photos+1)/2 {
		t.Fatalf("before compaction: %d pages, %d tombstones", lanePages(old), old.tombs.len())
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomic.Int64
	errc := make(chan error, 1)
	for w := range 4 {
		wg.Go(func() {
			for i := uint64(w); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := 2 + 2*(i%(photos/2)) // live photos: even keys
				want := photo(k, k*3)[i%4]
				n, _, err := v.Read(k, k*3, want.Size, nil)
				if err != nil || !bytes.Equal(n.Data, want.Data) {
					select {
					case errc <- errors.Join(err, errors.New("wrong bytes or error during compaction")):
					default:
					}
					return
				}
				reads.Add(1)
			}
		})
	}
	if _, err := v.Compact(context.Background(), CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	if lanePages(old) != 0 || old.tombs.nsorted() != 0 || old.lanes[0].mem != nil {
		t.Errorf("the index compaction replaced still holds %d pages", lanePages(old))
	}
	v.mu.RLock()
	cur := v.mu.index
	v.mu.RUnlock()
	if cur == old || lanePages(cur) != 1 {
		t.Errorf("after compaction: %d pages, want 1 (%d live photos)", lanePages(cur), photos/2)
	}
	for k := uint64(1); k <= photos; k++ {
		if k%2 == 1 {
			expectNotFound(t, v, k, k*3, needle.SizeThumb)
		} else {
			expectRead(t, v, photo(k, k*3)[3])
		}
	}
}

// TestIndexCloseWhileReading closes a volume while readers run every
// method that reads the index: none panics or sees freed memory (run with
// -race); each read returns the right bytes or ErrClosed.
func TestIndexCloseWhileReading(t *testing.T) {
	fs := memFS(t)
	const photos = pageRecords + 10
	v := create(t, fs, 1, Options{})
	writePhotos(t, v, photos)
	if _, err := v.Delete(context.Background(), 7, 21, needle.SizeAll); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var ok, closed atomic.Int64
	errc := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := uint64(w); ; i++ {
				k := 8 + i%(photos-8)
				want := photo(k, k*3)[i%4]
				n, _, err := v.Read(k, k*3, want.Size, nil)
				switch {
				case errors.Is(err, ErrClosed):
					closed.Add(1)
					// Every other reader of the index, after the close.
					v.Has(k, want.Size)
					v.Locate(k, want.Size)
					v.Deleted(7, needle.SizeAll)
					v.Entries(func(Entry) bool { return true })
					v.Status()
					return
				case err != nil || !bytes.Equal(n.Data, want.Data):
					errc <- errors.Join(err, errors.New("wrong bytes before the close"))
					return
				}
				ok.Add(1)
				v.Has(k, want.Size)
				v.Locate(k, want.Size)
				v.Deleted(7, needle.SizeAll)
				if i%512 == 0 {
					v.Entries(func(Entry) bool { return true })
				}
			}
		})
	}
	for ok.Load() < 2000 {
		runtime.Gosched()
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if closed.Load() != 8 {
		t.Fatalf("%d of 8 readers saw ErrClosed", closed.Load())
	}
	if _, ok := v.Locate(9, needle.SizeThumb); ok {
		t.Error("Locate after Close found an image")
	}
}

// TestIndexMergeFreesPages builds an index from shuffled keys, through
// many merges: only the pages of the final index stay mapped.
func TestIndexMergeFreesPages(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts mapped memory, which only Unix systems use")
	}
	base := settledMapped()
	ix := newIndex()
	ix.mergeMin = 500
	w := newPhotoWorkload(9)
	keys := w.keys(3*pageRecords, 0)
	w.rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	for _, k := range keys {
		w.photo(ix, k)
	}
	ix.merge()
	if lanePages(ix) != 3 {
		t.Fatalf("%d pages after the last merge, want 3", lanePages(ix))
	}
	if got := IndexMappedBytes() - base; got != 3*pageBytes {
		t.Errorf("%d bytes mapped for an index of 3 pages (%d): merges leaked the pages they replaced", got, 3*pageBytes)
	}
	ix.release()
	if got := IndexMappedBytes(); got > base {
		t.Errorf("%d bytes mapped after release, %d before", got, base)
	}
}

// TestIndexDroppedIsFreed checks the safety net: an index dropped without
// release (an error path, an EC volume's index) is unmapped once the
// collector finds it unreachable.
func TestIndexDroppedIsFreed(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts mapped memory, which only Unix systems use")
	}
	base := settledMapped()
	func() {
		ix := newIndex()
		w := newPhotoWorkload(4)
		for _, k := range w.keys(pageRecords+1, 0) {
			w.photo(ix, k)
		}
		for k := range uint64(2000) {
			ix.apply(idxEntry{key: k*7 + 1, size: allSizes, off: uint32(k), length: 7, tombstone: true})
		}
		if got := IndexMappedBytes() - base; got < 2*pageBytes {
			t.Fatalf("%d bytes mapped for 2 pages of records", got)
		}
	}()
	if got := settledMapped(); got > base {
		t.Errorf("%d bytes still mapped after the index was dropped, %d before", got, base)
	}
}
