package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/haybale/haybale/needle"
)

// dumpOf returns JSON lines as `haybale volume dump --json` prints them
// for vid: photos keys 1..photos, cookie key*3, the four sizes of each
// back to back from offset 64, needle i of a photo 1000*(i+1) bytes long.
// Photo 2's "s" is deleted (not live) and followed by its tombstone;
// photo 3's "m" was overwritten: the old needle is not live, the new one
// at the end is.
func dumpOf(vid uint32, photos int) (string, map[string][2]int64) {
	var b strings.Builder
	want := map[string][2]int64{} // live image path -> offset, length
	off := int64(64)
	line := func(key uint64, size string, length int64, tomb, live bool) {
		id := needle.PhotoID{Vid: vid, Key: key, Cookie: key * 3}
		fmt.Fprintf(&b, `{"offset":%d,"length":%d,"photo_id":"%s","key":%d,"size":"%s",`, off, length, id, key, size)
		if tomb {
			b.WriteString(`"tombstone":true,`)
		}
		fmt.Fprintf(&b, `"content_type":"image/jpeg","data_size":%d,"append_time":"2026-12-01T17:59:16Z","checksum":"00","live":%v}`+"\n",
			length-54, live)
		if live {
			want[needle.ImagePathPrefix+id.String()+"/"+size] = [2]int64{off, length}
		}
		off += length
	}
	for k := uint64(1); k <= uint64(photos); k++ {
		for i, s := range []string{"t", "s", "m", "l"} {
			dead := (k == 2 && s == "s") || (k == 3 && s == "m")
			line(k, s, int64(1000*(i+1)), false, !dead)
		}
	}
	if photos >= 3 {
		line(2, "s", 64, true, false)
		line(3, "m", 3000, false, true)
	}
	return b.String(), want
}

func testPlan(t *testing.T, cfg ColdPlanConfig) (*ColdPlan, map[string][2]int64, map[string]string) {
	t.Helper()
	d1, w1 := dumpOf(1, 5)
	d2, w2 := dumpOf(2, 4)
	want := map[string][2]int64{}
	file := map[string]string{}
	for p, r := range w1 {
		want[p], file[p] = r, "/v/1.dat"
	}
	for p, r := range w2 {
		want[p], file[p] = r, "/v/2.dat"
	}
	cfg.Volumes = []ColdVolume{{DatPath: "/v/1.dat", Dump: strings.NewReader(d1)}, {DatPath: "/v/2.dat", Dump: strings.NewReader(d2)}}
	p, err := NewColdPlan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p, want, file
}

// TestColdPlanEveryImageOnce: every live image of the dumps is in the
// plan exactly once, with its own needle's range and file; deleted and
// overwritten needles and tombstones are not.
func TestColdPlanEveryImageOnce(t *testing.T) {
	p, want, file := testPlan(t, ColdPlanConfig{Seed: 7})
	if len(p.Images) != len(want) || len(want) != 5*4-1+4*4-1 {
		t.Fatalf("%d images in the plan, %d live in the dumps", len(p.Images), len(want))
	}
	seen := map[string]bool{}
	var needleBytes, dataBytes int64
	for _, im := range p.Images {
		if seen[im.Path] {
			t.Fatalf("%s twice", im.Path)
		}
		seen[im.Path] = true
		r, ok := want[im.Path]
		if !ok || im.Offset != r[0] || im.Length != r[1] || im.File != file[im.Path] || im.DataSize != r[1]-54 {
			t.Fatalf("%+v: want %s offset %d length %d (live: %v)", im, file[im.Path], r[0], r[1], ok)
		}
		needleBytes += r[1]
		dataBytes += r[1] - 54
	}
	if p.NeedleBytes() != needleBytes || p.DataBytes() != dataBytes {
		t.Fatalf("needle bytes %d, data bytes %d; want %d, %d", p.NeedleBytes(), p.DataBytes(), needleBytes, dataBytes)
	}
	// Photo 3's "m" is the rewritten needle at the end of the file.
	for _, im := range p.Images {
		if im.Path == "/p/"+(needle.PhotoID{Vid: 1, Key: 3, Cookie: 9}).String()+"/m" && im.Offset != 64+5*10000+64 {
			t.Fatalf("overwritten image read at %d, want the new needle at %d", im.Offset, 64+5*10000+64)
		}
	}
}

// TestColdPlanOrder: the order is random, set by the seed alone (not by
// the order of the dumps); a sample is a prefix of the same order.
func TestColdPlanOrder(t *testing.T) {
	a, _, _ := testPlan(t, ColdPlanConfig{Seed: 1})
	b, _, _ := testPlan(t, ColdPlanConfig{Seed: 1})
	c, _, _ := testPlan(t, ColdPlanConfig{Seed: 2})
	paths := func(p *ColdPlan) []string {
		var s []string
		for _, im := range p.Images {
			s = append(s, im.Path)
		}
		return s
	}
	if !slices.Equal(paths(a), paths(b)) {
		t.Fatal("same seed, different orders")
	}
	if slices.Equal(paths(a), paths(c)) {
		t.Fatal("seeds 1 and 2 gave the same order")
	}
	if slices.IsSorted(paths(a)) {
		t.Fatal("the plan is in path order, not shuffled")
	}
	d1, _ := dumpOf(1, 5)
	d2, _ := dumpOf(2, 4)
	swapped, err := NewColdPlan(ColdPlanConfig{Seed: 1, Volumes: []ColdVolume{
		{DatPath: "/v/2.dat", Dump: strings.NewReader(d2)}, {DatPath: "/v/1.dat", Dump: strings.NewReader(d1)}}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(paths(a), paths(swapped)) {
		t.Fatal("the order depends on the order of the volume files")
	}
	s, _, _ := testPlan(t, ColdPlanConfig{Seed: 1, Sample: 5})
	if !slices.Equal(paths(s), paths(a)[:5]) {
		t.Fatalf("sample %v is not the first 5 of %v", paths(s), paths(a))
	}
}

// TestColdPlanSplit: Q jobs together hold every image once; job j holds
// images j, j+Q, ... in the plan's order.
func TestColdPlanSplit(t *testing.T) {
	p, _, _ := testPlan(t, ColdPlanConfig{Seed: 3})
	for _, q := range []int{1, 4, 16, len(p.Images)} {
		jobs := p.Split(q)
		if len(jobs) != q {
			t.Fatalf("q %d: %d jobs", q, len(jobs))
		}
		count := 0
		for j, job := range jobs {
			for k, im := range job {
				if want := p.Images[j+k*q]; im != want {
					t.Fatalf("q %d job %d read %d: %s, want %s", q, j, k, im.Path, want.Path)
				}
			}
			if n := len(job); n < len(p.Images)/q || n > len(p.Images)/q+1 {
				t.Fatalf("q %d job %d: %d images of %d", q, j, n, len(p.Images))
			}
			count += len(job)
		}
		if count != len(p.Images) {
			t.Fatalf("q %d: %d reads for %d images", q, count, len(p.Images))
		}
	}
}

// TestWriteIolog: the exact iolog of a known list of needles in two
// files.
func TestWriteIolog(t *testing.T) {
	images := []ColdImage{
		{Path: "/p/a/t", File: "/v/2.dat", Offset: 5368, Length: 28552},
		{Path: "/p/b/l", File: "/v/1.dat", Offset: 64, Length: 420056},
		{Path: "/p/c/m", File: "/v/2.dat", Offset: 64, Length: 5304},
	}
	var b strings.Builder
	if err := WriteIolog(&b, images); err != nil {
		t.Fatal(err)
	}
	want := `fio version 2 iolog
/v/2.dat add
/v/1.dat add
/v/2.dat open
/v/1.dat open
/v/2.dat read 5368 28552
/v/1.dat read 64 420056
/v/2.dat read 64 5304
/v/2.dat close
/v/1.dat close
`
	if b.String() != want {
		t.Fatalf("iolog:\n%s\nwant:\n%s", b.String(), want)
	}
}

// TestAligned: a range is rounded out to the alignment at both ends, an
// aligned one kept, one past the end of its file cut at the file's last
// whole block; the plan's aligned bytes add them up.
func TestAligned(t *testing.T) {
	p := &ColdPlan{Images: []ColdImage{
		{File: "a", Offset: 5368, Length: 28552},                  // 4096..36864
		{File: "a", Offset: 8192, Length: 4096},                   // aligned
		{File: "a", Offset: 64, Length: 8},                        // 0..4096
		{File: "b", Offset: 9000, Length: 200, FileSize: 9200},    // past the end: 4096..8192
		{File: "b", Offset: 20480, Length: 9000, FileSize: 29480}, // 20480..28672
		{File: "b", Offset: 64, Length: 8, FileSize: 100000},      // inside: 0..4096
	}}
	want := [][2]int64{{4096, 32768}, {8192, 4096}, {0, 4096}, {4096, 4096}, {20480, 8192}, {0, 4096}}
	for i, im := range p.Images {
		a := im.Aligned(4096)
		if a.Offset != want[i][0] || a.Length != want[i][1] || a.File != im.File {
			t.Fatalf("%+v aligned: %d, %d; want %v", im, a.Offset, a.Length, want[i])
		}
	}
	if got := p.AlignedBytes(4096); got != 32768+4096+4096+4096+8192+4096 {
		t.Fatalf("aligned bytes %d", got)
	}
}

// TestPageBytes: each page a range touches counts once, shared pages
// included, per file.
func TestPageBytes(t *testing.T) {
	p := &ColdPlan{Images: []ColdImage{
		{File: "a", Offset: 64, Length: 100},     // page 0
		{File: "a", Offset: 4000, Length: 200},   // pages 0-1
		{File: "a", Offset: 20000, Length: 4096}, // pages 4-5
		{File: "b", Offset: 0, Length: 4096},     // page 0 of another file
		{File: "a", Offset: 8192, Length: 1},     // page 2
	}}
	if got := p.PageBytes(4096); got != 6*4096 {
		t.Fatalf("page bytes %d, want %d", got, 6*4096)
	}
}

// TestWriteColdPlan: the files bench/serve-compare.sh reads: the paths in
// order, for each queue depth a job file naming one iolog per job whose
// reads are that job's share of the paths, and the totals.
func TestWriteColdPlan(t *testing.T) {
	p, want, file := testPlan(t, ColdPlanConfig{Seed: 5})
	dir := t.TempDir()
	if err := WriteColdPlan(dir, p, []int{4, 7}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "paths.txt"))
	if err != nil {
		t.Fatal(err)
	}
	paths := strings.Fields(string(b))
	if len(paths) != len(want) {
		t.Fatalf("%d paths, want %d", len(paths), len(want))
	}
	for _, q := range []int{4, 7} {
		job, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("fio-%d.job", q)))
		if err != nil {
			t.Fatal(err)
		}
		for _, opt := range []string{"ioengine=psync", "invalidate=0", "fadvise_hint=random", "group_reporting"} {
			if !strings.Contains(string(job), "\n"+opt+"\n") {
				t.Fatalf("fio-%d.job lacks %s:\n%s", q, opt, job)
			}
		}
		if n := strings.Count(string(job), "read_iolog="); n != q {
			t.Fatalf("fio-%d.job: %d jobs", q, n)
		}
		if !strings.Contains(string(job), "\ndirect=0\n") {
			t.Fatalf("fio-%d.job does not read buffered:\n%s", q, job)
		}
		djob, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("fio-%d-direct.job", q)))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(djob), "\ndirect=1\n") || strings.Count(string(djob), "read_iolog=") != q {
			t.Fatalf("fio-%d-direct.job:\n%s", q, djob)
		}
		for j := range q {
			for k, r := range iologReads(t, filepath.Join(dir, fmt.Sprintf("iolog-direct-%d-%d.log", q, j))) {
				path := paths[j+k*q]
				off, length := r.off, r.length
				wo, wl := want[path][0], want[path][1]
				if off%DirectAlign != 0 || length%DirectAlign != 0 || off > wo || off+length < wo+wl || off+length-(wo+wl) >= DirectAlign || wo-off >= DirectAlign {
					t.Fatalf("q %d direct job %d read %d: %s, want %s's needle (%d, %d bytes) rounded out to %d", q, j, k, r.line, path, wo, wl, DirectAlign)
				}
			}
		}
		reads := 0
		for j := range q {
			name := filepath.Join(dir, fmt.Sprintf("iolog-%d-%d.log", q, j))
			if !strings.Contains(string(job), "read_iolog="+name+"\n") {
				t.Fatalf("fio-%d.job does not name %s", q, name)
			}
			rs := iologReads(t, name)
			for k, r := range rs {
				path := paths[j+k*q]
				if r.file != file[path] || r.off != want[path][0] || r.length != want[path][1] {
					t.Fatalf("q %d job %d read %d: %s, want %s's needle in %s at %d, %d bytes", q, j, k, r.line, path, file[path], want[path][0], want[path][1])
				}
			}
			reads += len(rs)
		}
		if reads != len(paths) {
			t.Fatalf("q %d: %d reads for %d paths", q, reads, len(paths))
		}
	}
	totals, err := os.ReadFile(filepath.Join(dir, "plan.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var digits int
	for _, path := range paths {
		digits += len(strconv.Itoa(int(want[path][1] - 54)))
	}
	wantTotals := fmt.Sprintf("images %d\nneedle_bytes %d\ndata_bytes %d\npage_bytes %d\nsize_digits %d\naligned_bytes %d\n",
		len(paths), p.NeedleBytes(), p.DataBytes(), p.PageBytes(int64(os.Getpagesize())), digits, p.AlignedBytes(DirectAlign))
	if string(totals) != wantTotals {
		t.Fatalf("plan.txt:\n%s\nwant:\n%s", totals, wantTotals)
	}
	if err := WriteColdPlan(dir, p, []int{len(paths) + 1}); err == nil {
		t.Fatal("more jobs than images: no error")
	}
}

// TestColdPlanErrors: bad dumps and requests get an error naming the cause.
func TestColdPlanErrors(t *testing.T) {
	d1, _ := dumpOf(1, 3)
	good := func() []ColdVolume { return []ColdVolume{{DatPath: "/v/1.dat", Dump: strings.NewReader(d1)}} }
	missing := needle.PhotoID{Vid: 1, Key: 99, Cookie: 1}
	for _, c := range []struct {
		name string
		cfg  ColdPlanConfig
		want string
	}{
		{"no volumes", ColdPlanConfig{}, "no volume files"},
		{"not JSON", ColdPlanConfig{Volumes: []ColdVolume{{DatPath: "/v/1.dat", Dump: strings.NewReader("offset 64\n")}}}, "line 1"},
		{"no offset", ColdPlanConfig{Volumes: []ColdVolume{{DatPath: "/v/1.dat", Dump: strings.NewReader(`{"length":8,"photo_id":"1-1-1","size":"t","data_size":1,"live":true}` + "\n")}}}, "want offset"},
		{"bad size", ColdPlanConfig{Volumes: []ColdVolume{{DatPath: "/v/1.dat", Dump: strings.NewReader(`{"offset":64,"length":8,"photo_id":"1-1-0000000000000001","size":"all","data_size":1,"live":true}` + "\n")}}}, "not an image size"},
		{"space in path", ColdPlanConfig{Volumes: []ColdVolume{{DatPath: "/v/my vol.dat", Dump: strings.NewReader(d1)}}}, "without spaces"},
		{"twice", ColdPlanConfig{Volumes: append(good(), ColdVolume{DatPath: "/w/1.dat", Dump: strings.NewReader(d1)})}, "live in both"},
		{"photo missing", ColdPlanConfig{Volumes: good(), Photos: []needle.PhotoID{missing}}, missing.String()},
		{"sample too big", ColdPlanConfig{Volumes: good(), Sample: 100}, "only 11 live images"},
		{"empty", ColdPlanConfig{Volumes: []ColdVolume{{DatPath: "/v/1.dat", Dump: strings.NewReader("")}}}, "no live image"},
	} {
		_, err := NewColdPlan(c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	// Photos limits the plan to those photos.
	only := needle.PhotoID{Vid: 1, Key: 2, Cookie: 6}
	p, err := NewColdPlan(ColdPlanConfig{Volumes: good(), Photos: []needle.PhotoID{only}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Images) != 3 { // photo 2's "s" was deleted
		t.Fatalf("%d images of photo %s, want 3", len(p.Images), only)
	}
	for _, im := range p.Images {
		if !strings.HasPrefix(im.Path, "/p/"+only.String()+"/") {
			t.Fatalf("%s is not of photo %s", im.Path, only)
		}
	}
}

// iologRead is one read line of a fio iolog: "file read offset length".
type iologRead struct {
	line        string
	file        string
	off, length int64
}

// iologReads returns the read lines of the iolog at name, in order (the
// header and the open and close lines are skipped).
func iologReads(t *testing.T, name string) []iologRead {
	t.Helper()
	log, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	var rs []iologRead
	for _, l := range strings.Split(strings.TrimSpace(string(log)), "\n") {
		f := strings.Fields(l)
		if len(f) != 4 || f[1] != "read" {
			continue
		}
		off, _ := strconv.ParseInt(f[2], 10, 64)
		length, _ := strconv.ParseInt(f[3], 10, 64)
		rs = append(rs, iologRead{line: l, file: f[0], off: off, length: length})
	}
	return rs
}
