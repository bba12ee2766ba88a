package volume

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/haybale/haybale/needle"
)

// encodeBatch encodes ns as Write lays a batch out on disk.
func encodeBatch(t *testing.T, ns []*needle.Needle, appendTime int64) []byte {
	t.Helper()
	var buf []byte
	for i, n := range ns {
		c := *n
		c.AppendTime = appendTime
		if i < len(ns)-1 {
			c.Flags |= needle.FlagBatchContinues
		}
		var err error
		if buf, err = needle.Append(buf, &c); err != nil {
			t.Fatal(err)
		}
	}
	return buf
}

// TestDeleteBeforeWrite checks that a delete of a key the volume does not
// hold yet writes its tombstone, and that the key's needles stay deleted
// when they land after the tombstone: refused when written through the
// volume, and dead when their bytes follow the tombstone in the file (a
// write queued before the delete committed), across restarts, an idx
// rebuilt from the .dat, and compaction.
func TestDeleteBeforeWrite(t *testing.T) {
	ctx := context.Background()
	fs := memFS(t)
	v := create(t, fs, 5, Options{})
	mustWrite(t, v, photo(1, 11))
	size := v.Status().Size
	freed, err := v.Delete(ctx, 7, 77, needle.SizeAll)
	if err != nil || freed != 0 {
		t.Fatalf("delete of a key not there: freed %d, %v", freed, err)
	}
	if got := v.Status().Size; got != size+int64(needle.EncodedLen(0)) {
		t.Fatalf("volume grew from %d to %d bytes, want one tombstone", size, got)
	}
	if !v.Deleted(7, needle.SizeAll) || !v.Deleted(7, needle.SizeMedium) || v.Deleted(1, needle.SizeMedium) {
		t.Fatal("Deleted does not report the tombstone")
	}
	late := photo(7, 77)
	if _, err := v.Write(ctx, late); !errors.Is(err, ErrDeleted) {
		t.Fatalf("write after the delete: %v, want ErrDeleted", err)
	}
	mustWrite(t, v, photo(8, 88))
	v.Close()

	// The write's bytes land after the tombstone, as when the batch was
	// already queued when the tombstone committed.
	dat := fileBytes(t, fs, DatPath(testDir, 5))
	dat = append(dat, encodeBatch(t, late, time.Now().UnixNano())...)
	writeFile(t, fs, DatPath(testDir, 5), dat)
	check := func(what string, v *Volume) {
		t.Helper()
		for _, n := range late {
			if _, _, err := v.Read(n.Key, n.Cookie, n.Size, nil); !errors.Is(err, ErrNotFound) {
				t.Fatalf("%s: key 7 size %v: %v, want not found", what, n.Size, err)
			}
		}
		for _, n := range append(photo(1, 11), photo(8, 88)...) {
			expectRead(t, v, n)
		}
		if st := v.Status(); st.Images != 8 {
			t.Fatalf("%s: %d images, want 8", what, st.Images)
		}
	}
	v = reopen(t, fs, 5) // scans the appended bytes
	check("after the scan", v)
	v.Close()
	v = reopen(t, fs, 5) // from the idx the scan wrote
	check("from the idx", v)
	v.Close()
	if err := fs.Remove(IdxPath(testDir, 5)); err != nil {
		t.Fatal(err)
	}
	v = reopen(t, fs, 5)
	check("idx rebuilt", v)
	if _, err := v.Compact(ctx, CompactOptions{}); err != nil {
		t.Fatal(err)
	}
	check("after compaction", v)
	if !v.Deleted(7, needle.SizeAll) {
		t.Fatal("compaction dropped the tombstone")
	}
	v.Close()
	// The tombstone survived compaction, so bytes of the key that land
	// after it are still dead.
	dat = fileBytes(t, fs, DatPath(testDir, 5))
	dat = append(dat, encodeBatch(t, late, time.Now().UnixNano())...)
	writeFile(t, fs, DatPath(testDir, 5), dat)
	v = reopen(t, fs, 5)
	defer v.Close()
	check("late bytes after compaction", v)
	// A retried delete writes nothing more.
	size = v.Status().Size
	if freed, err := v.Delete(ctx, 7, 77, needle.SizeAll); err != nil || freed != 0 || v.Status().Size != size {
		t.Fatalf("retried delete: freed %d, %v, size %d -> %d", freed, err, size, v.Status().Size)
	}
}

// TestAppendTimeFromWriter checks that an append time chosen by the writer
// is stored as given, so two volumes given the same write hold the same
// bytes, and that absurd append times are refused.
func TestAppendTimeFromWriter(t *testing.T) {
	ctx := context.Background()
	fs := memFS(t)
	// Replicas of one volume share its needle secret.
	secret := []byte("8 bytes!")
	a := create(t, fs, 1, Options{Secret: secret})
	defer a.Close()
	b := create(t, fs, 2, Options{Secret: secret, Now: func() time.Time { return time.Now().Add(-3 * time.Second) }})
	defer b.Close()
	at := time.Now().Add(-time.Minute).UnixNano()
	var raws [2][][]byte
	for i, v := range []*Volume{a, b} {
		ns := photo(3, 33)
		for _, n := range ns {
			n.AppendTime = at
		}
		w := mustWrite(t, v, ns)
		for j, n := range ns {
			got, raw, err := v.Read(3, 33, n.Size, nil)
			if err != nil || got.AppendTime != at || got.Checksum != w[j].Checksum {
				t.Fatalf("volume %d size %v: append time %d, checksum %x (written %x), %v; want time %d", v.Vid(), n.Size, got.AppendTime, got.Checksum, w[j].Checksum, err, at)
			}
			raws[i] = append(raws[i], raw)
		}
	}
	for j := range raws[0] {
		if string(raws[0][j]) != string(raws[1][j]) {
			t.Fatalf("needle %d differs between the two volumes", j)
		}
	}
	for _, bad := range []int64{-1, time.Now().Add(2 * MaxAppendTimeAhead).UnixNano()} {
		ns := photo(4, 44)
		ns[0].AppendTime = bad
		if _, err := a.Write(ctx, ns); !errors.Is(err, ErrInvalid) {
			t.Fatalf("append time %d: %v, want ErrInvalid", bad, err)
		}
		if _, err := a.DeleteAt(ctx, 9, 9, needle.SizeAll, bad); !errors.Is(err, ErrInvalid) {
			t.Fatalf("delete with append time %d: %v, want ErrInvalid", bad, err)
		}
	}
	if a.Has(4, needle.SizeThumb) || a.Deleted(9, needle.SizeAll) {
		t.Fatal("a refused request left something behind")
	}
}
