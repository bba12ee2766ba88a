package volume

import (
	"bytes"
	"context"
	"testing"

	"github.com/haybale/haybale/needle"
)

func TestInspectFindsDamage(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 40, Options{})
	var ws [][]Written
	for k := uint64(1); k <= 6; k++ {
		ws = append(ws, mustWrite(t, v, photo(k, k)))
		if k == 5 {
			if _, err := v.Delete(context.Background(), 2, 2, needle.SizeAll); err != nil {
				t.Fatal(err)
			}
		}
	}
	v.Close()
	path := DatPath(testDir, 40)

	clean, err := InspectFile(context.Background(), path, InspectOptions{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	if !clean.Healthy() || clean.Live != 20 || clean.Needles != 25 || clean.Dead != 4 || clean.Tombstones != 1 {
		t.Fatalf("clean report %+v", clean)
	}
	if clean.LiveBytes+clean.DeadBytes+clean.TombstoneBytes != clean.Size-SuperblockSize {
		t.Fatalf("live %d + dead %d != %d", clean.LiveBytes, clean.DeadBytes, clean.Size-SuperblockSize)
	}

	// A bit flip inside photo 3's m needle, and a torn last batch.
	dat := fileBytes(t, fs, path)
	flipAt := ws[2][2].Offset + needle.HeaderSize + 5
	dat[flipAt] ^= 0x01
	last := ws[5][1].Offset + 3
	writeFile(t, fs, path, dat[:last])
	rep, err := InspectFile(context.Background(), path, InspectOptions{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Healthy() || len(rep.Corrupt) != 1 || rep.TornTail == nil {
		t.Fatalf("report %+v", rep)
	}
	d := rep.Corrupt[0]
	if d.Start != ws[2][2].Offset || d.End != ws[2][3].Offset {
		t.Fatalf("damage at [%d, %d), want [%d, %d)", d.Start, d.End, ws[2][2].Offset, ws[2][3].Offset)
	}
	if rep.TornTail.Start != ws[5][0].Offset || rep.TornTail.End != last {
		t.Fatalf("torn tail [%d, %d), want [%d, %d)", rep.TornTail.Start, rep.TornTail.End, ws[5][0].Offset, last)
	}
	// Second pass: every intact needle, with live status.
	var infos []NeedleInfo
	if _, err := InspectFile(context.Background(), path, InspectOptions{FS: fs, Each: func(n NeedleInfo) error {
		n.Needle.Data = nil
		infos = append(infos, n)
		return nil
	}}); err != nil {
		t.Fatal(err)
	}
	live := 0
	for _, n := range infos {
		if n.Live {
			live++
			if n.Needle.Key == 2 || n.Needle.IsTombstone() {
				t.Fatalf("deleted needle reported live: %+v", n)
			}
		}
	}
	if live != rep.Live || live != 15 {
		t.Fatalf("%d live in the second pass, report says %d", live, rep.Live)
	}
}

// TestReindexMatchesStore checks that an idx rebuilt from the .dat alone
// is byte for byte the idx the store wrote.
func TestReindexMatchesStore(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 41, Options{})
	for k := uint64(1); k <= 50; k++ {
		mustWrite(t, v, photo(k, k))
		if k%4 == 0 {
			if _, err := v.Delete(context.Background(), k, k, needle.SizeMedium); err != nil {
				t.Fatal(err)
			}
		}
	}
	v.Close()
	want := fileBytes(t, fs, IdxPath(testDir, 41))
	writeFile(t, fs, IdxPath(testDir, 41), []byte("garbage"))
	n, err := Reindex(context.Background(), DatPath(testDir, 41), fs)
	if err != nil {
		t.Fatal(err)
	}
	got := fileBytes(t, fs, IdxPath(testDir, 41))
	if n != 50*4+12 || !bytes.Equal(got, want) {
		t.Fatalf("reindex wrote %d records, %d bytes; store wrote %d bytes; equal %v", n, len(got), len(want), bytes.Equal(got, want))
	}
	v = reopen(t, fs, 41)
	defer v.Close()
	if v.Status().Images != 50*4-12 {
		t.Fatalf("%d images", v.Status().Images)
	}
	if _, err := Reindex(context.Background(), "/data/x.dat", fs); err == nil {
		t.Fatal("reindex of a badly named file succeeded")
	}
}

func TestCompactFileOffline(t *testing.T) {
	fs := memFS(t)
	v := create(t, fs, 42, Options{})
	for k := uint64(1); k <= 100; k++ {
		mustWrite(t, v, photo(k, k))
		if k%2 == 0 {
			if _, err := v.Delete(context.Background(), k, k, needle.SizeAll); err != nil {
				t.Fatal(err)
			}
		}
	}
	v.Close()
	res, err := CompactFile(context.Background(), DatPath(testDir, 42), Options{FS: fs}, CompactOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Reclaimed <= 0 || res.Copied != 200 {
		t.Fatalf("%+v", res)
	}
	rep, err := InspectFile(context.Background(), DatPath(testDir, 42), InspectOptions{FS: fs})
	if err != nil || !rep.Healthy() || rep.Dead != 0 || rep.Tombstones != 50 || rep.Live != 200 || rep.Generation != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
}
