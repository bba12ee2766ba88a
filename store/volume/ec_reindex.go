package volume

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// Regenerating a lost ecx.
//
// The ecx is the same on every holder and checksummed, so a holder that
// lost it (or whose copy does not check) first fetches it from another
// holder (InstallECIndex). When no copy is left, it is rebuilt from the
// shards (RegenerateECX): the data shards, read row by row, are the bytes
// of the encoded .dat, and walking their needles as recovery and Reindex
// walk a .dat (tombstones included) gives back the index the encode took
// its snapshot of, so the regenerated ecx is byte-identical to the lost
// one.

// ErrNoShards is returned by RegenerateECX when dir holds no shard of the
// volume whose header can be read.
var ErrNoShards = errors.New("volume: no readable shard of the EC volume here")

// ECIndexOK reports whether dir holds an ecx of vid that loads and checks
// (nil), or why not: an error wrapping fs.ErrNotExist when it is missing,
// ErrNotEC or a corruption error when it is damaged.
func ECIndexOK(ctx context.Context, fs vfs.FS, dir string, vid uint32) error {
	if fs == nil {
		fs = vfs.Default
	}
	g, _, err := loadECX(ctx, fs, dir, vid)
	if err != nil {
		return err
	}
	// The shards here must be of the set the ecx indexes.
	for i := 0; i < ECShards; i++ {
		if sg, ok := shardGeometry(fs, dir, vid, i); ok && !sameGeometry(&sg, &g) {
			return fmt.Errorf("%s: %w: the ecx is of generation %d, shard %d of generation %d", ECIndexPath(dir, vid), ErrNotEC, g.generation, i, sg.generation)
		}
	}
	return nil
}

// shardGeometry returns the geometry in the header of local shard i, if
// it reads and belongs to vid.
func shardGeometry(fs vfs.FS, dir string, vid uint32, i int) (ecGeometry, bool) {
	f, err := fs.Open(ECShardPath(dir, vid, i))
	if err != nil {
		return ecGeometry{}, false
	}
	defer f.Close()
	hdr := make([]byte, ECHeaderSize)
	if readFull(f, hdr, 0) != nil {
		return ecGeometry{}, false
	}
	g, idx, err := decodeECHeader(hdr, ecShardMagic)
	if err != nil || g.vid != vid || idx != uint32(i) {
		return ecGeometry{}, false
	}
	return g, true
}

// InstallECIndex copies the ecx of EC volume vid from src into dir, in
// place of a missing or damaged one: written under a temporary name and
// synced, checked (records, order, checksums, and that it indexes the
// shard set held here), then renamed into place and the directory synced.
// A copy that does not check is removed and reported (ErrNotEC or a
// corruption error); the former file is left as it was.
func InstallECIndex(ctx context.Context, fs vfs.FS, dir string, vid uint32, src ECFileSource) error {
	if fs == nil {
		fs = vfs.Default
	}
	path := ECIndexPath(dir, vid)
	tmp := path + ecTmpSuffix
	defer fs.Remove(tmp)
	if err := pullFile(ctx, fs, tmp, func(fn func([]byte, int64, int64) error) error {
		return src.CopyECFile(ctx, vid, "ecx", fn)
	}); err != nil {
		return fmt.Errorf("EC volume %d: copy ecx: %w", vid, err)
	}
	g, _, err := loadECXPath(ctx, fs, tmp, vid)
	if err != nil {
		return fmt.Errorf("EC volume %d: copied ecx: %w", vid, err)
	}
	for i := 0; i < ECShards; i++ {
		if sg, ok := shardGeometry(fs, dir, vid, i); ok && !sameGeometry(&sg, &g) {
			return fmt.Errorf("EC volume %d: %w: the copied ecx is of generation %d, shard %d here of generation %d", vid, ErrNotEC, g.generation, i, sg.generation)
		}
	}
	if err := fs.Rename(tmp, path); err != nil {
		return err
	}
	return fs.SyncDir(dir)
}

// ECRegenResult reports a regenerated ecx.
type ECRegenResult struct {
	Vid        uint32 `json:"vid"`
	Generation uint32 `json:"generation"`
	Needles    int    `json:"needles"` // live needles indexed
	// Tombstones counts the tombstones the walk met (deletes made before
	// the encode, which the ecx leaves out).
	Tombstones int `json:"tombstones"`
	// SkippedShards lists local shards left out because their bytes
	// disagree with the parity of their rows.
	SkippedShards []int `json:"skipped_shards,omitempty"`
}

// RegenerateECX rebuilds the ecx of EC volume vid in dir from its shards:
// the geometry comes from a local shard's header; the stream is read from
// the data shards (local, else through opts.Peers), rebuilding from parity
// what they cannot give; the needles are walked from the superblock to the
// end as Reindex walks a .dat; and the live needles are written as the ecx
// atomically (temporary file, sync, rename, directory sync), in place of
// a missing or damaged one. With 11 or more local shards, a shard whose
// bytes disagree with its rows' parity is left out first. A stretch of
// the stream that does not decode fails the regeneration (ErrCorrupt):
// an index missing a needle would serve it as deleted. The journal is not
// changed: it is applied when the volume opens.
func RegenerateECX(ctx context.Context, dir string, vid uint32, opts ECOptions) (ECRegenResult, error) {
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	fs := opts.FS
	res := ECRegenResult{Vid: vid}
	var g ecGeometry
	found := false
	for i := 0; i < ECShards && !found; i++ {
		g, found = shardGeometry(fs, dir, vid, i)
	}
	if !found {
		return res, fmt.Errorf("EC volume %d in %s: %w", vid, dir, ErrNoShards)
	}
	res.Generation = g.generation
	e := &ECVolume{opts: opts, dir: dir, vid: vid, geo: g}
	var err error
	if e.coder, err = newECCoder(); err != nil {
		return res, err
	}
	sb, err := DecodeSuperblock(g.super[:])
	if err != nil {
		return res, fmt.Errorf("EC volume %d: %w", vid, err)
	}
	if e.format, err = sb.Format(); err != nil {
		return res, fmt.Errorf("EC volume %d: %w", vid, err)
	}
	local := 0
	for i := range e.shards {
		e.shards[i], _ = openShard(fs, dir, &g, i)
		if e.shards[i] != nil {
			local++
		}
	}
	defer func() {
		for _, f := range e.shards {
			if f != nil {
				f.Close()
			}
		}
	}()
	if local > ECDataShards {
		bad := map[int]bool{}
		unlocated := int64(0)
		err := e.eachStripe(ctx, func(r, off int64, shards [][]byte) error {
			for i := range bad {
				shards[i] = nil
			}
			b, located := e.checkStripe(shards)
			if !located {
				unlocated++
			}
			if b >= 0 {
				bad[b] = true
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("EC volume %d: check shards: %w", vid, err)
		}
		if unlocated > 0 {
			return res, needle.Corruptf("EC volume %d: %d rows fail their parity and no single damaged shard explains it", vid, unlocated)
		}
		for i := range bad {
			e.shards[i].Close()
			e.shards[i] = nil
			res.SkippedShards = append(res.SkippedShards, i)
		}
	}
	ix := newIndex()
	var damage error
	wr, err := walk(ctx, &ecStream{e: e, ctx: ctx}, e.format, SuperblockSize, g.dataSize, walkVisitor{
		batch: func(batch []idxEntry) {
			for _, en := range batch {
				if en.tombstone {
					res.Tombstones++
				}
				ix.apply(en)
			}
		},
		damage: func(start, end int64, err error) {
			if damage == nil {
				damage = needle.Corruptf("EC volume %d: stream bytes [%d, %d) do not decode: %v", vid, start, end, err)
			}
		},
	})
	if err != nil {
		return res, fmt.Errorf("EC volume %d: walk the shards: %w", vid, err)
	}
	if damage == nil && wr.tornErr != nil {
		damage = needle.Corruptf("EC volume %d: stream bytes from %d do not decode: %v", vid, wr.validEnd, wr.tornErr)
	}
	if damage != nil {
		return res, damage
	}
	recs := make([]byte, ECHeaderSize, ECHeaderSize+ix.len()*idxRecordSize)
	ix.ascend(func(key uint64, size, off, length uint32) bool {
		recs = appendIdxRecord(recs, idxEntry{key: key, size: size, off: off, length: length})
		res.Needles++
		return true
	})
	copy(recs, encodeECHeader(ecxMagic, &g, uint32(res.Needles)))
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if err := vfs.WriteFileAtomic(fs, ECIndexPath(dir, vid), recs); err != nil {
		return res, fmt.Errorf("EC volume %d: write ecx: %w", vid, err)
	}
	return res, nil
}

// ecStream is the stream of an EC volume (the bytes of the encoded .dat)
// as a read-only vfs.File, for walking its needles.
type ecStream struct {
	e   *ECVolume
	ctx context.Context
}

var errStreamReadOnly = errors.New("volume: the stream of an EC volume is read-only")

// ReadAt reads stream bytes; bytes past the stream's end read as io.EOF.
func (s *ecStream) ReadAt(p []byte, off int64) (int, error) {
	end := s.e.geo.dataSize
	if off >= end {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), end-off))
	if _, err := s.e.readRangeLocked(s.ctx, p[:n], off, [ECShards]bool{}, readSequential); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (s *ecStream) WriteAt([]byte, int64) (int, error) { return 0, errStreamReadOnly }
func (s *ecStream) Close() error                       { return nil }
func (s *ecStream) Sync() error                        { return errStreamReadOnly }
func (s *ecStream) Truncate(int64) error               { return errStreamReadOnly }
func (s *ecStream) Size() (int64, error)               { return s.e.geo.dataSize, nil }

// RegenerateECXFiles is RegenerateECX for an offline tool: it takes the
// data directory's lock meanwhile, so it refuses to run under a running
// store, and reads local shards only.
func RegenerateECXFiles(ctx context.Context, dir string, vid uint32, opts ECFilesOptions) (ECRegenResult, error) {
	fs := opts.fs()
	lock, err := lockDir(fs, dir)
	if err != nil {
		return ECRegenResult{Vid: vid}, err
	}
	defer lock.Close()
	return RegenerateECX(ctx, dir, vid, ECOptions{FS: fs})
}

// LocalShards returns the shards of EC volume vid in dir whose headers
// read and belong to it, whether or not an ecx is there: what a store
// whose index is lost can still serve to peers regenerating it.
func LocalShards(fs vfs.FS, dir string, vid uint32) []int {
	if fs == nil {
		fs = vfs.Default
	}
	var out []int
	for i := 0; i < ECShards; i++ {
		if _, ok := shardGeometry(fs, dir, vid, i); ok {
			out = append(out, i)
		}
	}
	return out
}

// ReadShardFile fills p with bytes [off, off+len(p)) of the data area of
// local shard i of EC volume vid in dir, checking the shard's header and
// size, without an ecx: what a store whose index is lost serves to peers
// regenerating it (EcShardRead).
func ReadShardFile(fs vfs.FS, dir string, vid uint32, i int, p []byte, off int64) error {
	if fs == nil {
		fs = vfs.Default
	}
	if i < 0 || i >= ECShards {
		return fmt.Errorf("%w: shard %d out of range", ErrShardUnavailable, i)
	}
	g, ok := shardGeometry(fs, dir, vid, i)
	if !ok {
		return fmt.Errorf("%w: shard %d of volume %d is not held here", ErrShardUnavailable, i, vid)
	}
	if off < 0 || off+int64(len(p)) > g.shardSize() {
		return fmt.Errorf("%w: range [%d, %d) outside the shard's %d bytes", ErrInvalid, off, off+int64(len(p)), g.shardSize())
	}
	f, err := fs.Open(ECShardPath(dir, vid, i))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrShardUnavailable, err)
	}
	defer f.Close()
	if err := checkShard(f, &g, i); err != nil {
		return fmt.Errorf("%w: shard %d of volume %d: %v", ErrShardUnavailable, i, vid, err)
	}
	if err := readFull(f, p, ECHeaderSize+off); err != nil {
		return fmt.Errorf("%w: shard %d of volume %d: %v", ErrShardUnavailable, i, vid, err)
	}
	return nil
}
