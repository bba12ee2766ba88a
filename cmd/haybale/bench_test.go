package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// TestBenchGetOnceCommand runs `haybale bench get-once` against a server
// that counts its requests: every listed path once, the once: line with
// wrk-once.lua's fields and the bytes sent, the client's CPU line; a
// failed request makes the command fail with its cause; bad flags are
// refused with theirs.
func TestBenchGetOnceCommand(t *testing.T) {
	var mu sync.Mutex
	count := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		count[r.URL.Path]++
		mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/missing") {
			http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Length", "1000")
		w.Write(bytes.Repeat([]byte{'x'}, 1000))
	}))
	defer srv.Close()
	dir := t.TempDir()
	var list strings.Builder
	for i := range 20 {
		fmt.Fprintf(&list, "/p/%d/m\n", i)
	}
	good := filepath.Join(dir, "paths.txt")
	if err := os.WriteFile(good, []byte(list.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		root := newRootCmd()
		var stdout bytes.Buffer
		root.SetArgs(append([]string{"bench", "get-once"}, args...))
		root.SetOut(&stdout)
		root.SetErr(new(bytes.Buffer))
		err := root.ExecuteContext(context.Background())
		return stdout.String(), err
	}
	out, err := run("--url", srv.URL, "--paths", good, "--conns", "3")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	f := strings.Fields(lines[0])
	if len(f) != 17 || f[0] != "once:" || f[2] != "20" || f[4] != "20" || f[6] != "0" || f[8] != "0" || f[10] != "0" || f[15] != "rate" {
		t.Errorf("once line %q", lines[0])
	}
	if b, _ := strconv.Atoi(f[12]); b <= 20*1000 || b > 20*1200 {
		t.Errorf("bytes %s: want 20 bodies of 1000 and their headers", f[12])
	}
	if len(lines) < 2 || !strings.HasPrefix(lines[1], "client: cpu_us_per_request ") {
		t.Errorf("no client CPU line in %q", out)
	}
	for i := range 20 {
		if n := count[fmt.Sprintf("/p/%d/m", i)]; n != 1 {
			t.Errorf("/p/%d/m requested %d times", i, n)
		}
	}

	bad := filepath.Join(dir, "bad.txt")
	if err := os.WriteFile(bad, []byte("/p/1/m\n/p/1/missing\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = run("--url", srv.URL, "--paths", bad, "--conns", "1")
	if err == nil || !strings.Contains(err.Error(), "1 of 2 requests failed") || !strings.Contains(out, "status_errors 1 ") ||
		!strings.Contains(out, "error: /p/1/missing: status 404") {
		t.Errorf("a 404: err %v, output %q", err, out)
	}

	notPaths := filepath.Join(dir, "not.txt")
	if err := os.WriteFile(notPaths, []byte("/a\nb c\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--url", srv.URL}, "--paths is required"},
		{[]string{"--url", "https://x:1", "--paths", good}, "want http://HOST:PORT"},
		{[]string{"--url", srv.URL + "/p", "--paths", good}, "no path"},
		{[]string{"--url", srv.URL, "--paths", good, "--conns", "0"}, "want at least 1"},
		{[]string{"--url", srv.URL, "--paths", filepath.Join(dir, "none")}, "no such file"},
		{[]string{"--url", srv.URL, "--paths", notPaths}, "not.txt:2"},
	} {
		if _, err := run(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want %q", c.args, err, c.want)
		}
	}
}
