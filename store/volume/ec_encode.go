package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/klauspost/reedsolomon"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// ecChunk is the most bytes of one block that encode, rebuild and decode
// handle at a time: rows of large blocks are processed in column stripes,
// so memory stays at 14 chunks whatever the block size.
const ecChunk = 1 << 20

// ErrNotSealed is returned by EncodeEC for a volume that still accepts
// writes.
var ErrNotSealed = errors.New("volume: volume is writable; seal it (read-only and compacted) before encoding")

// ECEncodeOptions tune EC encoding. The zero value is usable.
type ECEncodeOptions struct {
	// LargeBlock and SmallBlock are the block sizes; defaults
	// DefaultECLargeBlock and DefaultECSmallBlock. Tests use tiny blocks.
	LargeBlock, SmallBlock int64
	// Progress, when set, is called with the stream bytes encoded so far
	// and the stream's length.
	Progress func(done, total int64)
	// Retire makes the volume refuse every append, deletes included, once
	// the encode has committed (they fail with ErrClosed): for a caller that
	// replaces the volume with its EC form, so that no delete lands in the
	// .dat behind the encoded snapshot.
	Retire bool
}

// ECEncodeResult reports what an encode wrote.
type ECEncodeResult struct {
	Vid        uint32 `json:"vid"`
	Generation uint32 `json:"generation"`
	DataSize   int64  `json:"data_size"`  // bytes of the encoded .dat
	ShardSize  int64  `json:"shard_size"` // bytes of each shard file, header included
	LargeBlock int64  `json:"large_block"`
	SmallBlock int64  `json:"small_block"`
	LargeRows  int64  `json:"large_rows"`
	SmallRows  int64  `json:"small_rows"`
	Needles    int    `json:"needles"`    // live needles indexed in the ecx
	LiveBytes  int64  `json:"live_bytes"` // bytes of the live needles
	// Straddling counts the live needles that cross a block boundary: a
	// healthy read of one of them costs two preads.
	Straddling int `json:"straddling"`
}

// newECCoder returns the Reed-Solomon coder of the EC format.
func newECCoder() (reedsolomon.Encoder, error) {
	return reedsolomon.New(ECDataShards, ECParityShards)
}

// EncodeEC encodes the volume into EC files in outDir (the volume's own
// directory or another): 14 shards, the ecx and an empty ecj. The volume
// must not be writable; its files are not changed, and deletes wait while it
// encodes. A crash at any moment leaves outDir either without an ecx (the
// .dat remains the volume) or with a complete EC volume: see the commit
// points in the EC section of the package doc.
func (v *Volume) EncodeEC(ctx context.Context, outDir string, opts ECEncodeOptions) (ECEncodeResult, error) {
	if s, _ := v.State(); s == StateWritable {
		return ECEncodeResult{}, fmt.Errorf("volume %d: %w", v.vid, ErrNotSealed)
	}
	return v.encodeEC(ctx, outDir, opts)
}

// RetireForEC makes the volume refuse every append from now on, deletes
// included (they fail with ErrClosed): for a caller that replaces the
// volume with its EC form. It waits for the round of appends in progress.
func (v *Volume) RetireForEC() error {
	if err := v.lead(); err != nil {
		return err
	}
	v.retired.Store(true)
	v.commit.release()
	return nil
}

func (v *Volume) encodeEC(ctx context.Context, outDir string, opts ECEncodeOptions) (ECEncodeResult, error) {
	if opts.LargeBlock <= 0 {
		opts.LargeBlock = DefaultECLargeBlock
	}
	if opts.SmallBlock <= 0 {
		opts.SmallBlock = DefaultECSmallBlock
	}
	if opts.LargeBlock < opts.SmallBlock || opts.LargeBlock > maxECBlock {
		return ECEncodeResult{}, fmt.Errorf("volume %d: %w: EC block sizes %d (large) and %d (small): large must be at least small and at most 1 TiB",
			v.vid, ErrInvalid, opts.LargeBlock, opts.SmallBlock)
	}
	// Hold the commit round for the whole encode: no tombstone can land in
	// the .dat behind the snapshot the shards are made of.
	if err := v.lead(); err != nil {
		return ECEncodeResult{}, err
	}
	defer v.commit.release()
	if s, reason := v.State(); s == StateFailed {
		return ECEncodeResult{}, fmt.Errorf("volume %d: %w: %s", v.vid, ErrReadOnly, reason)
	}
	fs := v.opts.FS
	if _, err := fs.Stat(ECIndexPath(outDir, v.vid)); err == nil {
		return ECEncodeResult{}, fmt.Errorf("volume %d: %w: %s", v.vid, ErrExists, ECIndexPath(outDir, v.vid))
	}
	g := ecGeometry{vid: v.vid, generation: v.super.Generation, dataSize: v.tail.Load(), large: opts.LargeBlock, small: opts.SmallBlock}
	copy(g.super[:], v.super.encode())
	res := ECEncodeResult{
		Vid: v.vid, Generation: g.generation, DataSize: g.dataSize, ShardSize: ECHeaderSize + g.shardSize(),
		LargeBlock: g.large, SmallBlock: g.small, LargeRows: g.largeRows(), SmallRows: g.smallRows(),
	}

	// The ecx records, in (key, size) order, and the straddle count.
	v.mu.RLock()
	recs := make([]byte, 0, ECHeaderSize+v.mu.index.len()*idxRecordSize)
	recs = append(recs, make([]byte, ECHeaderSize)...)
	var segs []ecSegment
	v.mu.index.ascend(func(key uint64, size, off, length uint32) bool {
		recs = appendIdxRecord(recs, idxEntry{key: key, size: size, off: off, length: length})
		res.Needles++
		res.LiveBytes += int64(length) * needle.Alignment
		if segs = g.segments(int64(off)*needle.Alignment, int(length)*needle.Alignment, segs[:0]); len(segs) > 1 {
			res.Straddling++
		}
		return true
	})
	v.mu.RUnlock()
	copy(recs, encodeECHeader(ecxMagic, &g, uint32(res.Needles)))

	if err := writeECShards(ctx, fs, v.dat, &g, outDir, opts.Progress); err != nil {
		return res, fmt.Errorf("volume %d: EC encode: %w", v.vid, err)
	}
	if err := vfs.WriteFileAtomic(fs, ECIndexPath(outDir, v.vid), recs); err != nil {
		return res, fmt.Errorf("volume %d: EC encode: write ecx: %w", v.vid, err)
	}
	if opts.Retire {
		// Still under the round lock: no append slips in between.
		v.retired.Store(true)
	}
	return res, nil
}

// writeECShards writes the 14 shards and the empty journal of the stream in
// dat under temporary names, syncs them, renames them into place and syncs
// outDir. It leaves no temporary file behind when it fails.
func writeECShards(ctx context.Context, fs vfs.FS, dat vfs.File, g *ecGeometry, outDir string, progress func(done, total int64)) (err error) {
	enc, err := newECCoder()
	if err != nil {
		return err
	}
	var files [ECShards]vfs.File
	tmps := make([]string, 0, ECShards+1)
	defer func() {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
		if err != nil {
			for _, p := range tmps {
				fs.Remove(p)
			}
		}
	}()
	for i := range files {
		p := ECShardPath(outDir, g.vid, i) + ecTmpSuffix
		tmps = append(tmps, p)
		if files[i], err = fs.Create(p); err != nil {
			return err
		}
		if _, err = files[i].WriteAt(encodeECHeader(ecShardMagic, g, uint32(i)), 0); err != nil {
			return err
		}
	}
	chunk := int(min(g.small, ecChunk))
	bufs := make([][]byte, ECShards)
	for i := range bufs {
		bufs[i] = make([]byte, chunk)
	}
	var done int64
	for r := int64(0); r < g.rows(); r++ {
		block, rowStream, rowShard := g.row(r)
		for c := int64(0); c < block; c += int64(chunk) {
			if err = ctx.Err(); err != nil {
				return err
			}
			n := int(min(int64(chunk), block-c))
			shards := make([][]byte, ECShards)
			for i := range shards {
				shards[i] = bufs[i][:n]
			}
			for i := 0; i < ECDataShards; i++ {
				if err = readStream(dat, shards[i], rowStream+int64(i)*block+c, g.dataSize); err != nil {
					return err
				}
			}
			if err = enc.Encode(shards); err != nil {
				return err
			}
			for i, f := range files {
				if _, err = f.WriteAt(shards[i], ECHeaderSize+rowShard+c); err != nil {
					return err
				}
			}
		}
		done = min(rowStream+ECDataShards*block, g.dataSize)
		if progress != nil {
			progress(done, g.dataSize)
		}
	}
	for i, f := range files {
		if err = f.Sync(); err != nil {
			return err
		}
		err = f.Close()
		files[i] = nil
		if err != nil {
			return err
		}
	}
	jtmp := ECJournalPath(outDir, g.vid) + ecTmpSuffix
	tmps = append(tmps, jtmp)
	j, err := fs.Create(jtmp)
	if err != nil {
		return err
	}
	if _, err = j.WriteAt(encodeECJHeader(g.vid, g.generation), 0); err == nil {
		err = j.Sync()
	}
	if cerr := j.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	for i := 0; i < ECShards; i++ {
		if err = fs.Rename(tmps[i], ECShardPath(outDir, g.vid, i)); err != nil {
			return err
		}
	}
	if err = fs.Rename(jtmp, ECJournalPath(outDir, g.vid)); err != nil {
		return err
	}
	return fs.SyncDir(outDir)
}

// readStream fills p with the bytes of f at off; bytes at or past end read
// as zeros (the padding of the last row).
func readStream(f vfs.File, p []byte, off, end int64) error {
	n := 0
	if off < end {
		want := int(min(int64(len(p)), end-off))
		got, err := f.ReadAt(p[:want], off)
		if got < want {
			if err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: read %d of %d bytes at %d", io.ErrUnexpectedEOF, got, want, off)
			}
			return err
		}
		n = want
	}
	clear(p[n:])
	return nil
}

// EncodeECFile encodes the volume file at path (named <vid>.dat) into EC
// files in outDir, offline: it takes the data directory's lock (and
// outDir's, when it is another directory), opens the volume (which
// recovers it), encodes it and closes it. The .dat is left as it is; the
// volume need not be marked sealed, since nothing else can write to it
// meanwhile.
func EncodeECFile(ctx context.Context, path, outDir string, opts Options, eopts ECEncodeOptions) (ECEncodeResult, error) {
	dir, vid, err := ParseDatPath(path)
	if err != nil {
		return ECEncodeResult{}, err
	}
	opts = opts.withDefaults()
	lock, err := lockDir(opts.FS, dir)
	if err != nil {
		return ECEncodeResult{}, err
	}
	defer lock.Close()
	if filepath.Clean(outDir) != filepath.Clean(dir) {
		if err := opts.FS.MkdirAll(outDir, 0o755); err != nil {
			return ECEncodeResult{}, err
		}
		olock, err := lockDir(opts.FS, outDir)
		if err != nil {
			return ECEncodeResult{}, err
		}
		defer olock.Close()
	}
	v, err := Open(ctx, dir, vid, opts)
	if err != nil {
		return ECEncodeResult{}, err
	}
	res, err := v.encodeEC(ctx, outDir, eopts)
	if cerr := v.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return res, err
}
