package bench

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/haybale/haybale/needle"
)

// A cold-read plan names the images a cold-read comparison reads, each
// once, in a random order, and the byte range of each one's needle in its
// volume file: the store is sent the image paths, fio reads the same
// ranges. WriteColdPlan writes it as the files bench/serve-compare.sh -c
// drives wrk and fio with:
//
//	paths.txt            one image path per line, in the plan's order (wrk)
//	fio-<Q>.job          a fio job file: Q psync jobs, one iolog each,
//	                     buffered reads
//	iolog-<Q>-<J>.log    job J's reads: images J, J+Q, J+2Q, ... of the plan
//	fio-<Q>-direct.job   the same jobs reading with O_DIRECT (direct=1)
//	iolog-direct-<Q>-<J>.log
//	                     job J's reads, each rounded out to DirectAlign
//	plan.txt             the plan's totals, "name N" lines: images,
//	                     needle_bytes, data_bytes, page_bytes,
//	                     size_digits and aligned_bytes (see the methods
//	                     of the same names)
//
// An iolog is fio's version 2 format: a header line, then "<file> add" and
// "<file> open" for each volume file the job reads, one "<file> read
// <offset> <length>" line per image, and "<file> close" at the end. Every
// read is the whole needle (header, data, footer and padding), as the
// store's one pread of a needle not in the page cache reads it; in the
// direct iologs the needle's range rounded out to DirectAlign, as the
// store's direct read of it (see store/volume, direct.go).

// DirectAlign is the alignment to which the store rounds a direct read of
// a needle (internal/vfs.DirectAlign), and the direct iologs each read.
const DirectAlign = 4096

// ColdVolume is one volume file and the JSON lines `haybale volume dump
// --json` printed for it.
type ColdVolume struct {
	// DatPath is the volume file, as fio opens it (an absolute path, so
	// that fio can run from any directory).
	DatPath string
	// Size is the volume file's size in bytes; zero when not known. The
	// direct iologs keep their reads inside it (see ColdImage.Aligned).
	Size int64
	// Dump holds the dump's JSON lines, one needle each.
	Dump io.Reader
}

// ColdImage is one image of a cold-read plan.
type ColdImage struct {
	// Path is the image path a store answers it at, /p/<photo ID>/<size>.
	Path string
	// File, Offset and Length are its needle's byte range in its volume
	// file.
	File   string
	Offset int64
	Length int64
	// DataSize is the image's byte count: the length of a GET's body.
	DataSize int64
	// FileSize is the size of File, zero when not known.
	FileSize int64
}

// ColdPlanConfig configures NewColdPlan.
type ColdPlanConfig struct {
	// Volumes are the volume files and their dumps. Required.
	Volumes []ColdVolume
	// Photos, when set, limits the plan to these photos; each must have at
	// least one live image in the dumps.
	Photos []needle.PhotoID
	// Sample, when positive, keeps this many images, a random sample;
	// zero keeps every image.
	Sample int
	// Seed seeds the order (and the sample).
	Seed uint64
}

// ColdPlan is a random order of distinct images, each with its needle's
// byte range.
type ColdPlan struct {
	Images []ColdImage
}

// dumpLine is the part of a dump's JSON line a plan needs (the line is
// tools.DumpRecord).
type dumpLine struct {
	Offset    *int64 `json:"offset"`
	Length    *int64 `json:"length"`
	PhotoID   string `json:"photo_id"`
	Size      string `json:"size"`
	Tombstone bool   `json:"tombstone"`
	DataSize  *int64 `json:"data_size"`
	Live      bool   `json:"live"`
}

// NewColdPlan reads the dumps and returns every live image (of Photos,
// when set), each once, in a random order, or a random Sample of them.
func NewColdPlan(cfg ColdPlanConfig) (*ColdPlan, error) {
	if len(cfg.Volumes) == 0 {
		return nil, errors.New("cold plan: no volume files")
	}
	if cfg.Sample < 0 {
		return nil, fmt.Errorf("cold plan: sample %d: want 0 (every image) or more", cfg.Sample)
	}
	var want map[needle.PhotoID]bool
	if len(cfg.Photos) > 0 {
		want = make(map[needle.PhotoID]bool, len(cfg.Photos))
		for _, id := range cfg.Photos {
			want[id] = true
		}
	}
	var images []ColdImage
	where := map[string]string{} // image path -> volume file, to catch an image in two files
	found := map[needle.PhotoID]bool{}
	for _, v := range cfg.Volumes {
		if v.DatPath == "" || strings.ContainsAny(v.DatPath, " \t\r\n") {
			// fio's iolog separates fields by spaces.
			return nil, fmt.Errorf("cold plan: volume file %q: want a path without spaces", v.DatPath)
		}
		sc := bufio.NewScanner(v.Dump)
		sc.Buffer(make([]byte, 0, 4096), 1<<20)
		for line := 1; sc.Scan(); line++ {
			if len(strings.TrimSpace(sc.Text())) == 0 {
				continue
			}
			var d dumpLine
			if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
				return nil, fmt.Errorf("cold plan: dump of %s, line %d: %w", v.DatPath, line, err)
			}
			if d.Offset == nil || d.Length == nil || d.DataSize == nil || d.PhotoID == "" || d.Size == "" {
				return nil, fmt.Errorf("cold plan: dump of %s, line %d: want offset, length, photo_id, size and data_size", v.DatPath, line)
			}
			if d.Tombstone || !d.Live {
				continue
			}
			id, err := needle.ParsePhotoID(d.PhotoID)
			if err != nil {
				return nil, fmt.Errorf("cold plan: dump of %s, line %d: %w", v.DatPath, line, err)
			}
			if want != nil && !want[id] {
				continue
			}
			path := needle.ImagePathPrefix + d.PhotoID + "/" + d.Size
			if _, size, _, err := needle.ParseImagePath(path); err != nil || size.Letter() == "" {
				return nil, fmt.Errorf("cold plan: dump of %s, line %d: size %q is not an image size", v.DatPath, line, d.Size)
			}
			if *d.Offset < 0 || *d.Length <= 0 || *d.DataSize < 0 || *d.DataSize > *d.Length {
				return nil, fmt.Errorf("cold plan: dump of %s, line %d: offset %d, length %d, data size %d do not describe a needle",
					v.DatPath, line, *d.Offset, *d.Length, *d.DataSize)
			}
			if other, dup := where[path]; dup {
				return nil, fmt.Errorf("cold plan: image %s is live in both %s and %s", path, other, v.DatPath)
			}
			where[path] = v.DatPath
			found[id] = true
			images = append(images, ColdImage{Path: path, File: v.DatPath, Offset: *d.Offset, Length: *d.Length, DataSize: *d.DataSize, FileSize: v.Size})
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("cold plan: dump of %s: %w", v.DatPath, err)
		}
	}
	for _, id := range cfg.Photos {
		if !found[id] {
			return nil, fmt.Errorf("cold plan: photo %s has no live image in the dumps of %d volume files", id, len(cfg.Volumes))
		}
	}
	if len(images) == 0 {
		return nil, errors.New("cold plan: the dumps list no live image")
	}
	// The dumps come in file order; sort by path first so that the order
	// depends on the seed and the images alone.
	slices.SortFunc(images, func(a, b ColdImage) int { return strings.Compare(a.Path, b.Path) })
	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	rng.Shuffle(len(images), func(i, j int) { images[i], images[j] = images[j], images[i] })
	if cfg.Sample > 0 {
		if cfg.Sample > len(images) {
			return nil, fmt.Errorf("cold plan: sample %d: the dumps list only %d live images", cfg.Sample, len(images))
		}
		images = images[:cfg.Sample]
	}
	return &ColdPlan{Images: images}, nil
}

// Split deals the plan's images over jobs: job j gets images j, j+jobs,
// j+2*jobs, ..., in the plan's order. The jobs together read every image
// once, and at any moment read near the same place in the list, as jobs
// connections taking the next path of one queue do.
func (p *ColdPlan) Split(jobs int) [][]ColdImage {
	out := make([][]ColdImage, jobs)
	for i, im := range p.Images {
		out[i%jobs] = append(out[i%jobs], im)
	}
	return out
}

// NeedleBytes is the sum of the images' needle lengths: what one read of
// each range returns.
func (p *ColdPlan) NeedleBytes() int64 {
	var n int64
	for _, im := range p.Images {
		n += im.Length
	}
	return n
}

// DataBytes is the sum of the images' sizes: the body bytes of one GET of
// each.
func (p *ColdPlan) DataBytes() int64 {
	var n int64
	for _, im := range p.Images {
		n += im.DataSize
	}
	return n
}

// SizeDigits is the sum of the decimal digits of the images' sizes: the
// bytes their Content-Length header values add up to, which with one
// answer's header block tells what one 200 of the right length per image
// adds up to, to the byte.
func (p *ColdPlan) SizeDigits() int64 {
	var n int64
	for _, im := range p.Images {
		n += int64(len(strconv.FormatInt(im.DataSize, 10)))
	}
	return n
}

// Aligned returns the image with its range rounded out to multiples of
// align: what a direct read of its needle reads. The store's direct read
// of a needle at the end of a file whose size is not a multiple of align
// reads to the end of the file (a short read); fio fails on a short read
// (EIO), so when FileSize is known such a range ends at the last whole
// block of the file instead, moved back a block if nothing were left: fio
// then reads up to align-1 bytes less than the store for that one needle
// of the file, never more.
func (im ColdImage) Aligned(align int64) ColdImage {
	lo := im.Offset / align * align
	hi := (im.Offset + im.Length + align - 1) / align * align
	if im.FileSize > 0 && hi > im.FileSize {
		hi = max(im.FileSize/align*align, align)
		lo = min(lo, hi-align)
	}
	im.Offset, im.Length = lo, hi-lo
	return im
}

// AlignedBytes is the sum of the lengths of the images' ranges rounded out
// to align: what one direct read of each range returns (at most; less for
// a range ending past the end of its file).
func (p *ColdPlan) AlignedBytes(align int64) int64 {
	var n int64
	for _, im := range p.Images {
		n += im.Aligned(align).Length
	}
	return n
}

// PageBytes is the size of the distinct pages of pageSize bytes the
// plan's ranges touch: what a cold run with no readahead reads from the
// disk, each page once.
func (p *ColdPlan) PageBytes(pageSize int64) int64 {
	type span struct{ first, last int64 }
	byFile := map[string][]span{}
	for _, im := range p.Images {
		byFile[im.File] = append(byFile[im.File], span{im.Offset / pageSize, (im.Offset + im.Length - 1) / pageSize})
	}
	var pages int64
	for _, spans := range byFile {
		slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.first, b.first) })
		next := int64(-1) // first page not yet counted
		for _, s := range spans {
			first := max(s.first, next)
			if s.last >= first {
				pages += s.last - first + 1
				next = s.last + 1
			}
		}
	}
	return pages * pageSize
}

// WriteIolog writes images as one fio iolog (version 2): every file the
// images are in is added and opened first, in order of first use, then
// one read per image, then the files are closed.
func WriteIolog(w io.Writer, images []ColdImage) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, "fio version 2 iolog")
	var files []string
	for _, im := range images {
		if !slices.Contains(files, im.File) {
			files = append(files, im.File)
		}
	}
	for _, f := range files {
		fmt.Fprintf(bw, "%s add\n", f)
	}
	for _, f := range files {
		fmt.Fprintf(bw, "%s open\n", f)
	}
	for _, im := range images {
		fmt.Fprintf(bw, "%s read %d %d\n", im.File, im.Offset, im.Length)
	}
	for _, f := range files {
		fmt.Fprintf(bw, "%s close\n", f)
	}
	return bw.Flush()
}

// WriteFioJob writes a fio job file with one psync job per iolog. The
// jobs read through the page cache as the store's buffered reads do
// (buffered, with POSIX_FADV_RANDOM, as the store's read descriptor is
// marked), or, with direct, bypassing it with O_DIRECT as the store's
// direct reads of cold needles do (the iologs' ranges must then be
// aligned: see ColdImage.Aligned). They leave the cache as they find it
// (invalidate=0: the caller drops the volume files before the run, once;
// a job dropping them when it opens its files would drop pages other jobs
// have read).
func WriteFioJob(w io.Writer, iologs []string, direct bool) error {
	bw := bufio.NewWriter(w)
	d := 0
	if direct {
		d = 1
	}
	fmt.Fprintf(bw, "# %d jobs, each replaying its iolog once: the needles of a cold-read plan.\n", len(iologs))
	fmt.Fprintf(bw, "[global]\nioengine=psync\nthread\ndirect=%d\ninvalidate=0\nfadvise_hint=random\ngroup_reporting\n", d)
	for j, l := range iologs {
		if strings.ContainsAny(l, "\r\n") {
			return fmt.Errorf("fio job: iolog path %q has a line break", l)
		}
		fmt.Fprintf(bw, "\n[cold-%d]\nread_iolog=%s\n", j, l)
	}
	return bw.Flush()
}

// WriteColdPlan writes the plan's files (listed above) into dir, with a
// fio job file and its iologs for each queue depth in jobs.
func WriteColdPlan(dir string, p *ColdPlan, jobs []int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	write := func(name string, fill func(io.Writer) error) error {
		f, err := os.Create(filepath.Join(abs, name))
		if err != nil {
			return err
		}
		if err := fill(f); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", name, err)
		}
		return f.Close()
	}
	err = write("paths.txt", func(w io.Writer) error {
		bw := bufio.NewWriter(w)
		for _, im := range p.Images {
			fmt.Fprintln(bw, im.Path)
		}
		return bw.Flush()
	})
	if err != nil {
		return err
	}
	for _, q := range jobs {
		if q <= 0 || q > len(p.Images) {
			return fmt.Errorf("queue depth %d: want 1 to %d, the plan's images", q, len(p.Images))
		}
		var logs, direct []string
		for j, part := range p.Split(q) {
			name := fmt.Sprintf("iolog-%d-%d.log", q, j)
			if err := write(name, func(w io.Writer) error { return WriteIolog(w, part) }); err != nil {
				return err
			}
			logs = append(logs, filepath.Join(abs, name))
			aligned := make([]ColdImage, len(part))
			for i, im := range part {
				aligned[i] = im.Aligned(DirectAlign)
			}
			name = fmt.Sprintf("iolog-direct-%d-%d.log", q, j)
			if err := write(name, func(w io.Writer) error { return WriteIolog(w, aligned) }); err != nil {
				return err
			}
			direct = append(direct, filepath.Join(abs, name))
		}
		if err := write(fmt.Sprintf("fio-%d.job", q), func(w io.Writer) error { return WriteFioJob(w, logs, false) }); err != nil {
			return err
		}
		if err := write(fmt.Sprintf("fio-%d-direct.job", q), func(w io.Writer) error { return WriteFioJob(w, direct, true) }); err != nil {
			return err
		}
	}
	return write("plan.txt", func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "images %d\nneedle_bytes %d\ndata_bytes %d\npage_bytes %d\nsize_digits %d\naligned_bytes %d\n",
			len(p.Images), p.NeedleBytes(), p.DataBytes(), p.PageBytes(int64(os.Getpagesize())), p.SizeDigits(), p.AlignedBytes(DirectAlign))
		return err
	})
}
