package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/haybale/haybale/needle"
	"github.com/haybale/haybale/store/volume"
)

// TestBenchColdPlanCommand writes a real volume, runs `haybale bench
// cold-plan` on it, and reads back every range of every job's iolog: each
// is the whole needle of the image at that job's place in paths.txt, and
// every live image is read once.
func TestBenchColdPlanCommand(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v, err := volume.Create(ctx, dir, 3, volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]int{} // image path -> data size
	for k := uint64(1); k <= 12; k++ {
		var ns []*needle.Needle
		for i, s := range needle.PhotoSizes {
			data := bytes.Repeat([]byte{byte(k), byte(i)}, 500*(i+1)+int(k))
			ns = append(ns, &needle.Needle{Key: k, Cookie: k * 11, Size: s, ContentType: needle.TypeJPEG, Data: data})
			live[needle.ImagePath(needle.PhotoID{Vid: 3, Key: k, Cookie: k * 11}, s, "")] = len(data)
		}
		if _, err := v.Write(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	// Photo 5 deleted: not in the plan.
	if _, err := v.Delete(ctx, 5, 55, needle.SizeAll); err != nil {
		t.Fatal(err)
	}
	for _, s := range needle.PhotoSizes {
		delete(live, needle.ImagePath(needle.PhotoID{Vid: 3, Key: 5, Cookie: 55}, s, ""))
	}
	sb := v.Superblock()
	format, err := sb.Format()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "plan")
	root := newRootCmd()
	var stdout bytes.Buffer
	root.SetArgs([]string{"bench", "cold-plan", "--dir", out, "--jobs", "3,44", "--seed", "9", volume.DatPath(dir, 3)})
	root.SetOut(&stdout)
	root.SetErr(new(bytes.Buffer))
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stdout.String(), fmt.Sprintf("%d images,", len(live))) {
		t.Fatalf("output %q, want %d images", stdout.String(), len(live))
	}
	b, err := os.ReadFile(filepath.Join(out, "paths.txt"))
	if err != nil {
		t.Fatal(err)
	}
	paths := strings.Fields(string(b))
	if len(paths) != len(live) {
		t.Fatalf("%d paths, want %d", len(paths), len(live))
	}
	dat, err := os.ReadFile(volume.DatPath(dir, 3))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []int{3, 44} {
		seen := map[string]bool{}
		for j := range q {
			log, err := os.ReadFile(filepath.Join(out, fmt.Sprintf("iolog-%d-%d.log", q, j)))
			if err != nil {
				t.Fatal(err)
			}
			k := 0
			for _, l := range strings.Split(string(log), "\n") {
				f := strings.Fields(l)
				if len(f) != 4 || f[1] != "read" {
					continue
				}
				if f[0] != volume.DatPath(dir, 3) {
					t.Fatalf("read of %s, want the volume file", f[0])
				}
				path := paths[j+k*q]
				off, _ := strconv.Atoi(f[2])
				length, _ := strconv.Atoi(f[3])
				if off < 0 || length <= 0 || off+length > len(dat) {
					t.Fatalf("%s: range %d+%d outside the %d-byte file", path, off, length, len(dat))
				}
				rec := dat[off : off+length]
				n, err := format.Decode(rec)
				if err != nil {
					t.Fatalf("%s: %s: %v", path, l, err)
				}
				id, size, _, err := needle.ParseImagePath(path)
				if err != nil {
					t.Fatal(err)
				}
				if n.Key != id.Key || n.Cookie != id.Cookie || n.Size != size || len(n.Data) != live[path] {
					t.Fatalf("%s: the range holds key %d cookie %d size %v, %d bytes", path, n.Key, n.Cookie, n.Size, len(n.Data))
				}
				// The whole needle, padding included, and not more: the
				// next 8-byte boundary after the footer.
				if need := (needle.HeaderSize + len(n.Data) + needle.FooterSize + 7) / 8 * 8; length != need {
					t.Fatalf("%s: %d bytes read, the needle is %d", path, length, need)
				}
				if seen[path] {
					t.Fatalf("q %d: %s read twice", q, path)
				}
				seen[path] = true
				k++
			}
		}
		if len(seen) != len(live) {
			t.Fatalf("q %d: %d images read, want %d", q, len(seen), len(live))
		}
	}

	// Bad input: a clear error, no plan.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "cold-plan", volume.DatPath(dir, 3)}, "--dir is required"},
		{[]string{"bench", "cold-plan", "--dir", t.TempDir(), filepath.Join(dir, "9.dat")}, "9.dat"},
		{[]string{"bench", "cold-plan", "--dir", t.TempDir(), "--sample", "1000", volume.DatPath(dir, 3)}, "sample 1000"},
	} {
		root := newRootCmd()
		root.SetArgs(c.args)
		root.SetOut(new(bytes.Buffer))
		root.SetErr(new(bytes.Buffer))
		if err := root.ExecuteContext(ctx); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want one containing %q", c.args, err, c.want)
		}
	}
}
