package volume

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// ECFilesOptions configure the offline EC operations on files (verify,
// rebuild, decode). The zero value is usable.
type ECFilesOptions struct {
	// FS is the file system; default vfs.Default.
	FS vfs.FS
	// Progress, when set, is called with the bytes processed so far and
	// the bytes to process.
	Progress func(done, total int64)
}

func (o ECFilesOptions) fs() vfs.FS {
	if o.FS == nil {
		return vfs.Default
	}
	return o.FS
}

// ECReport describes the health of an EC volume's files.
type ECReport struct {
	Vid        uint32 `json:"vid"`
	Generation uint32 `json:"generation"`
	DataSize   int64  `json:"data_size"`
	Images     int    `json:"images"`  // live needles
	Deletes    int64  `json:"deletes"` // journaled deletes
	// Missing lists the shard files that are absent or whose header or
	// size is wrong; Damaged the shards whose bytes disagree with the
	// parity of their rows (found when at least 11 shards are readable).
	Missing []int `json:"missing"`
	Damaged []int `json:"damaged"`
	// Problems describes each defect found.
	Problems []string `json:"problems,omitempty"`
	// UnlocatedRows counts rows whose parity does not hold but whose
	// damaged shard could not be singled out.
	UnlocatedRows int64 `json:"unlocated_rows"`
	// Unreadable counts the live needles that cannot be read, healthy or
	// rebuilt.
	Unreadable int `json:"unreadable"`
}

// Healthy reports whether every shard is present and intact and every
// needle reads.
func (r *ECReport) Healthy() bool {
	return len(r.Missing) == 0 && len(r.Damaged) == 0 && r.UnlocatedRows == 0 && r.Unreadable == 0
}

// Lost returns the shards to rebuild: missing and damaged ones.
func (r *ECReport) Lost() []int {
	lost := slices.Concat(r.Missing, r.Damaged)
	slices.Sort(lost)
	return slices.Compact(lost)
}

// Recoverable reports whether a rebuild can restore every lost shard.
func (r *ECReport) Recoverable() bool {
	return len(r.Lost()) <= ECParityShards && r.UnlocatedRows == 0
}

// VerifyEC checks the EC volume vid in dir from its files alone: the ecx
// and journal, every shard's header and size, the parity of every row
// (singling out a damaged shard where it can), and that every live needle
// reads and verifies. It changes nothing and takes no lock.
func VerifyEC(ctx context.Context, dir string, vid uint32, opts ECFilesOptions) (ECReport, error) {
	fs := opts.fs()
	e, err := OpenEC(ctx, dir, vid, ECOptions{FS: fs})
	if err != nil {
		return ECReport{}, err
	}
	defer e.Close()
	st := e.Status()
	rep := ECReport{Vid: vid, Generation: st.Generation, DataSize: st.DataSize, Images: st.Images, Deletes: st.Deletes}
	for i := range e.shards {
		if e.shards[i] == nil {
			rep.Missing = append(rep.Missing, i)
			cause := "missing"
			if e.shardErr[i] != nil {
				cause = e.shardErr[i].Error()
			}
			rep.Problems = append(rep.Problems, fmt.Sprintf("shard %d: %s", i, cause))
		}
	}
	g := &e.geo
	total := g.shardSize() + int64(st.Images)
	damaged := map[int]bool{}
	err = e.eachStripe(ctx, func(r int64, off int64, shards [][]byte) error {
		if opts.Progress != nil {
			opts.Progress(off, total)
		}
		bad, located := e.checkStripe(shards)
		if !located {
			rep.UnlocatedRows++
			rep.Problems = append(rep.Problems, fmt.Sprintf("row %d at shard offset %d: parity mismatch, damaged shard not found", r, off))
		}
		if bad >= 0 && !damaged[bad] {
			damaged[bad] = true
			rep.Problems = append(rep.Problems, fmt.Sprintf("shard %d: bytes at offset %d disagree with the row's parity", bad, off))
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	for i := range damaged {
		rep.Damaged = append(rep.Damaged, i)
	}
	slices.Sort(rep.Damaged)

	var done int64
	var entries []Entry
	e.Entries(func(en Entry) bool { entries = append(entries, en); return true })
	var buf []byte
	for _, en := range entries {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		e.mu.RLock()
		_, buf, err = e.readEntryLocked(ctx, en.Key, en.Size, uint32(en.Offset/8), uint32(en.Length/8), buf)
		e.mu.RUnlock()
		if err != nil {
			rep.Unreadable++
			if rep.Unreadable <= 100 {
				rep.Problems = append(rep.Problems, fmt.Sprintf("needle key %x size %v: %v", en.Key, en.Size, err))
			}
		}
		done++
		if opts.Progress != nil && done%1024 == 0 {
			opts.Progress(g.shardSize()+done, total)
		}
	}
	if opts.Progress != nil {
		opts.Progress(total, total)
	}
	return rep, nil
}

// eachStripe calls fn for every column stripe of every row with the
// stripe's bytes from each local shard (nil for shards not held or not
// readable). The slices are reused between calls.
func (e *ECVolume) eachStripe(ctx context.Context, fn func(row, shardOff int64, shards [][]byte) error) error {
	g := &e.geo
	chunk := int(min(g.small, ecChunk))
	bufs := make([][]byte, ECShards)
	for i := range bufs {
		bufs[i] = make([]byte, chunk)
	}
	shards := make([][]byte, ECShards)
	for r := int64(0); r < g.rows(); r++ {
		block, _, rowShard := g.row(r)
		for c := int64(0); c < block; c += int64(chunk) {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := int(min(int64(chunk), block-c))
			for i, f := range e.shards {
				shards[i] = nil
				if f != nil && readFull(f, bufs[i][:n], ECHeaderSize+rowShard+c) == nil {
					shards[i] = bufs[i][:n]
				}
			}
			if err := fn(r, rowShard+c, shards); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkStripe checks the parity of one stripe (nil entries missing). It
// returns the shard it found damaged (-1 for none) and false when the
// parity does not hold and no single damaged shard explains it. With fewer
// than 11 shards present nothing can be checked.
func (e *ECVolume) checkStripe(shards [][]byte) (bad int, located bool) {
	present := 0
	for _, s := range shards {
		if s != nil {
			present++
		}
	}
	if present <= ECDataShards {
		return -1, true
	}
	consistent := func(skip int) bool {
		work := make([][]byte, ECShards)
		for i, s := range shards {
			if s != nil && i != skip {
				work[i] = s
			}
		}
		if err := e.coder.Reconstruct(work); err != nil {
			return false
		}
		// Reconstruct used the first 10 present shards; the others must
		// agree with what it computed.
		ok, err := e.coder.Verify(work)
		if err != nil || !ok {
			return false
		}
		for i, s := range shards {
			if s != nil && i != skip && string(s) != string(work[i]) {
				return false
			}
		}
		return true
	}
	if consistent(-1) {
		return -1, true
	}
	if present <= ECDataShards+1 {
		return -1, false
	}
	for j, s := range shards {
		if s != nil && consistent(j) {
			return j, true
		}
	}
	return -1, false
}

// RebuildEC regenerates the shards of EC volume vid in dir that are
// missing or whose header or size is wrong, and those listed in also
// (shards VerifyEC found damaged), from the remaining ones. Each shard is
// written under a temporary name, synced and renamed over the old one, so
// a crash leaves every shard either as it was or rebuilt whole. It needs
// at least 10 good shards and takes the directory's lock. It returns the
// shards it rebuilt.
func RebuildEC(ctx context.Context, dir string, vid uint32, also []int, opts ECFilesOptions) ([]int, error) {
	fs := opts.fs()
	lock, err := lockDir(fs, dir)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	e, err := OpenEC(ctx, dir, vid, ECOptions{FS: fs})
	if err != nil {
		return nil, err
	}
	defer e.Close()
	var targets []int
	for i := range e.shards {
		if e.shards[i] == nil || slices.Contains(also, i) {
			targets = append(targets, i)
		}
	}
	if len(targets) == 0 {
		return nil, nil
	}
	if len(targets) > ECParityShards {
		return nil, fmt.Errorf("EC volume %d: %w: shards %v lost, at most %d can be rebuilt", vid, ErrUnrecoverable, targets, ECParityShards)
	}
	for _, i := range targets {
		if f := e.shards[i]; f != nil {
			f.Close()
			e.shards[i] = nil
		}
	}
	g := &e.geo
	var files []vfs.File
	var tmps []string
	defer func() {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
		for _, p := range tmps {
			fs.Remove(p)
		}
	}()
	for _, i := range targets {
		p := ECShardPath(dir, vid, i) + ecTmpSuffix
		f, err := fs.Create(p)
		if err != nil {
			return nil, err
		}
		files, tmps = append(files, f), append(tmps, p)
		if _, err := f.WriteAt(encodeECHeader(ecShardMagic, g, uint32(i)), 0); err != nil {
			return nil, err
		}
	}
	required := make([]bool, ECShards)
	for _, i := range targets {
		required[i] = true
	}
	work := make([][]byte, ECShards)
	outs := make([][]byte, ECShards)
	err = e.eachStripe(ctx, func(r, off int64, shards [][]byte) error {
		n := 0
		for i, s := range shards {
			if s != nil {
				n = len(s)
			}
			work[i] = s
		}
		for _, i := range targets {
			if cap(outs[i]) < n {
				outs[i] = make([]byte, n)
			}
			work[i] = outs[i][:0]
		}
		if err := e.coder.ReconstructSome(work, required); err != nil {
			return fmt.Errorf("row %d: %w", r, err)
		}
		for k, i := range targets {
			if _, err := files[k].WriteAt(work[i], ECHeaderSize+off); err != nil {
				return err
			}
		}
		if opts.Progress != nil {
			opts.Progress(off, g.shardSize())
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("EC volume %d: rebuild: %w", vid, err)
	}
	for k, f := range files {
		if err := f.Sync(); err != nil {
			return nil, err
		}
		err := f.Close()
		files[k] = nil
		if err != nil {
			return nil, err
		}
	}
	files = nil
	for k, i := range targets {
		if err := fs.Rename(tmps[k], ECShardPath(dir, vid, i)); err != nil {
			return nil, err
		}
	}
	tmps = nil
	if err := fs.SyncDir(dir); err != nil {
		return nil, err
	}
	if opts.Progress != nil {
		opts.Progress(g.shardSize(), g.shardSize())
	}
	return targets, nil
}

// ECDecodeResult reports what a decode wrote.
type ECDecodeResult struct {
	Vid        uint32 `json:"vid"`
	Generation uint32 `json:"generation"` // of the decoded .dat
	Size       int64  `json:"size"`       // bytes of the decoded .dat
	Images     int    `json:"images"`     // live needles
	Deletes    int    `json:"deletes"`    // journaled deletes applied
	Reclaimed  int64  `json:"reclaimed"`  // bytes compacted away
}

// DecodeEC turns EC volume vid in dir back into a plain volume file at out
// (named <vid>.dat to get its idx and sealed mark beside it). The stream is
// read from the data shards, rebuilding what they cannot give; the
// superblock gets the next compaction generation; the journal's deletes
// are applied and, when there are any, compacted away. The new volume is
// built in a temporary directory beside out and renamed into place last,
// so a crash leaves either no out or a complete one; the EC files are not
// changed. Needles are byte-identical to the encoded ones, except those of
// a batch that lost members to deletes, which compaction re-encodes.
func DecodeEC(ctx context.Context, dir string, vid uint32, out string, opts ECFilesOptions) (ECDecodeResult, error) {
	fs := opts.fs()
	lock, err := lockDir(fs, dir)
	if err != nil {
		return ECDecodeResult{Vid: vid}, err
	}
	defer lock.Close()
	e, err := OpenEC(ctx, dir, vid, ECOptions{FS: fs})
	if err != nil {
		return ECDecodeResult{Vid: vid}, err
	}
	defer e.Close()
	return e.DecodeTo(ctx, out, opts.Progress)
}

// DecodeTo writes the volume back as a plain volume file at out (see
// DecodeEC), while the EC volume goes on serving reads; deletes wait until
// it is done, so none is missed, and fail with ErrClosed once it has
// succeeded: they belong to the decoded volume. progress, when set, is called with the
// stream bytes written so far and the stream's length.
func (e *ECVolume) DecodeTo(ctx context.Context, out string, progress func(done, total int64)) (ECDecodeResult, error) {
	fs, vid := e.opts.FS, e.vid
	res := ECDecodeResult{Vid: vid}
	e.jmu.Lock()
	defer e.jmu.Unlock()
	if _, err := fs.Stat(out); err == nil {
		return res, fmt.Errorf("%w: %s", ErrExists, out)
	}
	outDir := filepath.Dir(out)
	if err := fs.MkdirAll(outDir, 0o755); err != nil {
		return res, err
	}
	recs, _, _, err := readJournal(fs, ECJournalPath(e.dir, vid), vid, e.geo.generation)
	if err != nil {
		return res, err
	}
	tmpDir := filepath.Join(outDir, fmt.Sprintf(".%d%s", vid, ecDecodeTmpName))
	if err := RemoveLeftover(fs, tmpDir); err != nil {
		return res, err
	}
	if err := fs.MkdirAll(tmpDir, 0o755); err != nil {
		return res, err
	}
	defer RemoveLeftover(fs, tmpDir)
	if err := e.writeStream(ctx, fs, DatPath(tmpDir, vid), progress); err != nil {
		return res, fmt.Errorf("EC volume %d: decode: %w", vid, err)
	}
	v, err := Open(ctx, tmpDir, vid, Options{FS: fs})
	if err != nil {
		return res, fmt.Errorf("EC volume %d: decode: %w", vid, err)
	}
	if err := v.MarkReadOnly(ctx, sealedReason); err != nil {
		v.Close()
		return res, err
	}
	for _, r := range recs {
		_, err := v.Delete(ctx, r.key, r.cookie, needle.SizeCode(r.size))
		if err != nil && !errors.Is(err, ErrNotFound) {
			v.Close()
			return res, fmt.Errorf("EC volume %d: decode: apply journaled delete of %x: %w", vid, r.key, err)
		}
		res.Deletes++
	}
	if len(recs) > 0 {
		cres, err := v.Compact(ctx, CompactOptions{})
		if err != nil {
			v.Close()
			return res, fmt.Errorf("EC volume %d: decode: compact: %w", vid, err)
		}
		res.Reclaimed = cres.Reclaimed
	}
	st := v.Status()
	res.Generation, res.Size, res.Images = st.Generation, st.Size, st.Images
	if err := v.Close(); err != nil {
		return res, err
	}
	// The idx and the mark first, the .dat last: the .dat's rename is the
	// commit point (an idx or mark without its .dat is ignored).
	if filepath.Base(out) == filepath.Base(DatPath("", vid)) {
		for _, p := range []string{IdxPath(tmpDir, vid), readOnlyPath(tmpDir, vid)} {
			if err := fs.Rename(p, filepath.Join(outDir, filepath.Base(p))); err != nil {
				return res, err
			}
		}
	}
	if err := fs.Rename(DatPath(tmpDir, vid), out); err != nil {
		return res, err
	}
	if err := fs.SyncDir(outDir); err != nil {
		return res, err
	}
	e.retired = true
	return res, nil
}

// writeStream writes the encoded .dat, with the next compaction generation
// in its superblock, to path and syncs it.
func (e *ECVolume) writeStream(ctx context.Context, fs vfs.FS, path string, progress func(done, total int64)) error {
	sb, err := DecodeSuperblock(e.geo.super[:])
	if err != nil {
		return err
	}
	sb.Generation++
	f, err := fs.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(sb.encode(), 0); err != nil {
		return err
	}
	buf := make([]byte, min(e.geo.small, ecChunk))
	e.mu.RLock()
	defer e.mu.RUnlock()
	for off := int64(SuperblockSize); off < e.geo.dataSize; {
		n := int(min(int64(len(buf)), e.geo.dataSize-off))
		if _, err := e.readRangeLocked(ctx, buf[:n], off, [ECShards]bool{}, readSequential); err != nil {
			return err
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
		off += int64(n)
		if progress != nil {
			progress(off, e.geo.dataSize)
		}
	}
	// A data shard's bytes may be damaged where it is still readable:
	// check every live needle as written and repair the damaged ones.
	var nbuf, rbuf []byte
	var ferr error
	e.mu.index.ascend(func(key uint64, size, off, length uint32) bool {
		n := int(length) * needle.Alignment
		if cap(nbuf) < n {
			nbuf = make([]byte, n)
		}
		nbuf = nbuf[:n]
		if ferr = readFull(f, nbuf, int64(off)*needle.Alignment); ferr != nil {
			return false
		}
		if nd, err := e.format.Decode(nbuf); err == nil {
			if _, err := verifyRead(nd, key, needle.SizeCode(size)); err == nil {
				return true
			}
		}
		if _, rbuf, ferr = e.readEntryLocked(ctx, key, needle.SizeCode(size), off, length, rbuf); ferr != nil {
			ferr = fmt.Errorf("needle key %x size %d: %w", key, size, ferr)
			return false
		}
		_, ferr = f.WriteAt(rbuf, int64(off)*needle.Alignment)
		return ferr == nil
	})
	if ferr != nil {
		return ferr
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return fs.SyncDir(filepath.Dir(path))
}

// RemoveLeftover removes a temporary file, or a temporary directory and
// the files in it (one level), if it exists: what an interrupted decode
// or atomic write leaves.
func RemoveLeftover(fs vfs.FS, path string) error {
	st, err := fs.Stat(path)
	if err != nil {
		return nil
	}
	if st.IsDir() {
		names, err := fs.List(path)
		if err != nil {
			return err
		}
		for _, n := range names {
			if err := fs.Remove(filepath.Join(path, n)); err != nil {
				return err
			}
		}
	}
	return fs.Remove(path)
}

// ECForm says which form of a volume a directory holds.
type ECForm int

// Forms of a volume in a directory.
const (
	// FormNone: neither a .dat nor a committed EC volume.
	FormNone ECForm = iota
	// FormDat: a plain volume (<vid>.dat).
	FormDat
	// FormEC: an EC volume (<vid>.ecx and its shards).
	FormEC
)

// ResolveEC settles which form of volume vid dir holds and removes what a
// crash left of the other: with both a .dat and an ecx, the .dat wins when
// its compaction generation is newer than the ecx's (a decode committed),
// else the EC form wins (an encode committed) and the .dat, its idx and
// its read-only mark are removed; shards and a journal without an ecx are
// leftovers of an encode that never committed and are removed when the
// .dat exists; an ecx whose header cannot be read leaves the .dat in
// service (and the EC files in place). A running store calls it at
// start-up, under its lock.
func ResolveEC(fs vfs.FS, dir string, vid uint32) (ECForm, error) {
	if fs == nil {
		fs = vfs.Default
	}
	_, datErr := fs.Stat(DatPath(dir, vid))
	_, ecxErr := fs.Stat(ECIndexPath(dir, vid))
	hasDat, hasECX := datErr == nil, ecxErr == nil
	switch {
	case !hasDat && !hasECX:
		return FormNone, nil
	case hasDat && !hasECX:
		return FormDat, removeFiles(fs, dir, ecFiles(dir, vid, false))
	case !hasDat && hasECX:
		return FormEC, nil
	}
	datGen, err := datGeneration(fs, DatPath(dir, vid))
	if err != nil {
		return FormNone, err
	}
	f, err := fs.Open(ECIndexPath(dir, vid))
	if err != nil {
		return FormNone, err
	}
	hdr := make([]byte, ECHeaderSize)
	err = readFull(f, hdr, 0)
	f.Close()
	g, _, derr := decodeECHeader(hdr, ecxMagic)
	if err != nil || derr != nil {
		// This ecx cannot serve: keep the complete .dat, and leave the EC
		// files for an operator to look at.
		return FormDat, nil
	}
	if datGen > g.generation {
		return FormDat, removeFiles(fs, dir, ecFiles(dir, vid, true))
	}
	return FormEC, removeFiles(fs, dir, []string{DatPath(dir, vid), IdxPath(dir, vid), readOnlyPath(dir, vid)})
}

// RemoveEC removes the EC files of volume vid (shards, journal, and the
// ecx last) from dir and syncs it: after a decode into dir committed, they
// are redundant.
func RemoveEC(fs vfs.FS, dir string, vid uint32) error {
	if fs == nil {
		fs = vfs.Default
	}
	return removeFiles(fs, dir, ecFiles(dir, vid, true))
}

// RemoveDat removes the plain files of volume vid (.dat, .idx, read-only
// mark) from dir and syncs it: after an encode into dir committed, they
// are redundant.
func RemoveDat(fs vfs.FS, dir string, vid uint32) error {
	if fs == nil {
		fs = vfs.Default
	}
	return removeFiles(fs, dir, []string{DatPath(dir, vid), IdxPath(dir, vid), readOnlyPath(dir, vid)})
}

// ecFiles lists the EC files of vid: shards and journal, then the ecx when
// withIndex (removed last: it is the commit point).
func ecFiles(dir string, vid uint32, withIndex bool) []string {
	var paths []string
	for i := 0; i < ECShards; i++ {
		paths = append(paths, ECShardPath(dir, vid, i))
	}
	paths = append(paths, ECJournalPath(dir, vid))
	if withIndex {
		paths = append(paths, ECIndexPath(dir, vid))
	}
	return paths
}

// removeFiles removes the paths that exist, in order, then syncs dir.
func removeFiles(fs vfs.FS, dir string, paths []string) error {
	removed := false
	for _, p := range paths {
		if _, err := fs.Stat(p); err != nil {
			continue
		}
		if err := fs.Remove(p); err != nil {
			return err
		}
		removed = true
	}
	if !removed {
		return nil
	}
	return fs.SyncDir(dir)
}

// datGeneration reads the compaction generation from a .dat's superblock.
func datGeneration(fs vfs.FS, path string) (uint32, error) {
	f, err := fs.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	b := make([]byte, SuperblockSize)
	if err := readFull(f, b, 0); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	sb, err := DecodeSuperblock(b)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return sb.Generation, nil
}
