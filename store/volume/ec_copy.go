package volume

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/haybale/haybale/internal/vfs"
)

// ErrECFileName is returned for a name that does not name an EC file.
var ErrECFileName = errors.New("volume: not an EC file name (want ecx, ecj or ec00..ec13)")

// ecFilePath returns the path of EC file name ("ecx", "ecj", "ec00".."ec13")
// of vid in dir, and the shard index for a shard (-1 otherwise).
func ecFilePath(dir string, vid uint32, name string) (string, int, error) {
	switch name {
	case "ecx":
		return ECIndexPath(dir, vid), -1, nil
	case "ecj":
		return ECJournalPath(dir, vid), -1, nil
	}
	num, ok := strings.CutPrefix(name, "ec")
	i, err := strconv.Atoi(num)
	if !ok || err != nil || len(num) != 2 || i < 0 || i >= ECShards {
		return "", 0, fmt.Errorf("%w: %q", ErrECFileName, name)
	}
	return ECShardPath(dir, vid, i), i, nil
}

// CopyFile streams EC file name ("ecx", "ecj", "ec00".."ec13") of the
// volume to fn, in chunks of at most 1 MiB, for a store that takes over
// some shards. The journal is copied under the delete lock, so it holds
// whole records; a shard must be held here (and usable).
func (e *ECVolume) CopyFile(ctx context.Context, name string, fn func(chunk []byte, off, total int64) error) error {
	path, shard, err := ecFilePath(e.dir, e.vid, name)
	if err != nil {
		return err
	}
	if name == "ecj" {
		e.jmu.Lock()
		defer e.jmu.Unlock()
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.mu.closed {
		return ErrClosed
	}
	if shard >= 0 && e.shards[shard] == nil {
		return fmt.Errorf("%w: shard %d of volume %d is not held here", ErrShardUnavailable, shard, e.vid)
	}
	f, err := e.opts.FS.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	total, err := f.Size()
	if err != nil {
		return err
	}
	buf := make([]byte, min(total, copyChunk))
	for off := int64(0); off < total; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(int64(len(buf)), total-off))
		if err := readFull(f, buf[:n], off); err != nil {
			return err
		}
		if err := fn(buf[:n], off, total); err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}

// ECFileSource streams EC files of a volume held elsewhere (see
// ECVolume.CopyFile for the contract).
type ECFileSource interface {
	CopyECFile(ctx context.Context, vid uint32, name string, fn func(chunk []byte, off, total int64) error) error
}

// InstallEC copies the shards of EC volume vid listed in shards from src
// into dir, with the ecx and, when dir has none yet, the journal: each file
// is written under a temporary name and synced, the shards and journal are
// renamed into place and the directory synced, and the ecx is renamed last,
// so a crash leaves dir with its former EC files or the new ones, each
// whole. The copied shards are checked against the ecx before anything is
// renamed. The caller then opens (or reopens) the EC volume.
func InstallEC(ctx context.Context, fs vfs.FS, dir string, vid uint32, shards []int, src ECFileSource) error {
	if fs == nil {
		fs = vfs.Default
	}
	names := []string{"ecx"}
	if _, err := fs.Stat(ECJournalPath(dir, vid)); err != nil {
		names = append(names, "ecj")
	}
	for _, i := range shards {
		if i < 0 || i >= ECShards {
			return fmt.Errorf("%w: shard %d", ErrECFileName, i)
		}
		names = append(names, fmt.Sprintf("ec%02d", i))
	}
	var tmps []string
	defer func() {
		for _, p := range tmps {
			fs.Remove(p)
		}
	}()
	for _, name := range names {
		path, _, _ := ecFilePath(dir, vid, name)
		tmp := path + ecTmpSuffix
		tmps = append(tmps, tmp)
		if err := pullFile(ctx, fs, tmp, func(fn func([]byte, int64, int64) error) error {
			return src.CopyECFile(ctx, vid, name, fn)
		}); err != nil {
			return fmt.Errorf("EC volume %d: copy %s: %w", vid, name, err)
		}
	}
	// Check what arrived before it replaces anything.
	g, _, err := loadECXPath(ctx, fs, tmps[0], vid)
	if err != nil {
		return err
	}
	for k, name := range names {
		_, shard, _ := ecFilePath(dir, vid, name)
		if shard < 0 {
			continue
		}
		f, err := fs.Open(tmps[k])
		if err != nil {
			return err
		}
		err = checkShard(f, &g, shard)
		f.Close()
		if err != nil {
			return fmt.Errorf("EC volume %d: copied shard %d: %w", vid, shard, err)
		}
	}
	for k := len(names) - 1; k >= 0; k-- {
		if k == 0 {
			if err := fs.SyncDir(dir); err != nil {
				return err
			}
		}
		path, _, _ := ecFilePath(dir, vid, names[k])
		if err := fs.Rename(tmps[k], path); err != nil {
			return err
		}
	}
	tmps = nil
	return fs.SyncDir(dir)
}

// pullFile writes what copyFn streams to path and syncs it.
func pullFile(ctx context.Context, fs vfs.FS, path string, copyFn func(func([]byte, int64, int64) error) error) error {
	f, err := fs.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var want, got int64 = -1, 0
	err = copyFn(func(chunk []byte, off, total int64) error {
		if off != got || (want >= 0 && total != want) || off+int64(len(chunk)) > total {
			return fmt.Errorf("chunk at %d of %d bytes out of order (have %d of %d)", off, total, got, want)
		}
		want = total
		if _, err := f.WriteAt(chunk, off); err != nil {
			return err
		}
		got += int64(len(chunk))
		return nil
	})
	if err != nil {
		return err
	}
	if want < 0 {
		want = 0
	}
	if got != want {
		return fmt.Errorf("copy ended at %d of %d bytes", got, want)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// RemoveECShards removes the listed local shard files of EC volume vid from
// dir (after they were copied to other stores) and syncs it. The caller
// then reopens the EC volume.
func RemoveECShards(fs vfs.FS, dir string, vid uint32, shards []int) error {
	if fs == nil {
		fs = vfs.Default
	}
	var paths []string
	for _, i := range shards {
		if i < 0 || i >= ECShards {
			return fmt.Errorf("%w: shard %d", ErrECFileName, i)
		}
		paths = append(paths, ECShardPath(dir, vid, i))
	}
	return removeFiles(fs, dir, paths)
}

// RebuildShards regenerates the listed shards of the volume into its
// directory from the others, read locally or from the peers (the shards
// need not have been held here), and returns once they are durable: each
// is written under a temporary name, synced, and renamed into place. The
// caller then reopens the volume to serve them. It needs 10 readable
// shards for every stripe.
func (e *ECVolume) RebuildShards(ctx context.Context, shards []int, progress func(done, total int64)) error {
	fs, g := e.opts.FS, &e.geo
	for _, i := range shards {
		if i < 0 || i >= ECShards {
			return fmt.Errorf("%w: shard %d", ErrECFileName, i)
		}
	}
	if len(shards) == 0 {
		return nil
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.mu.closed {
		return ErrClosed
	}
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
	for _, i := range shards {
		p := ECShardPath(e.dir, e.vid, i) + ecTmpSuffix
		f, err := fs.Create(p)
		if err != nil {
			return err
		}
		files, tmps = append(files, f), append(tmps, p)
		if _, err := f.WriteAt(encodeECHeader(ecShardMagic, g, uint32(i)), 0); err != nil {
			return err
		}
	}
	chunk := int(min(g.small, ecChunk))
	out := make([]byte, chunk)
	for r := int64(0); r < g.rows(); r++ {
		block, _, rowShard := g.row(r)
		for c := int64(0); c < block; c += int64(chunk) {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := int(min(int64(chunk), block-c))
			for k, i := range shards {
				var skip [ECShards]bool
				for _, j := range shards {
					skip[j] = true
				}
				if err := e.rebuildLocked(ctx, ecSegment{row: r, shard: i, off: rowShard + c, n: n}, out[:n], skip); err != nil {
					return err
				}
				if _, err := files[k].WriteAt(out[:n], ECHeaderSize+rowShard+c); err != nil {
					return err
				}
			}
			if progress != nil {
				progress(rowShard+c+int64(n), g.shardSize())
			}
		}
	}
	for k, f := range files {
		if err := f.Sync(); err != nil {
			return err
		}
		err := f.Close()
		files[k] = nil
		if err != nil {
			return err
		}
	}
	for k, i := range shards {
		if err := fs.Rename(tmps[k], ECShardPath(e.dir, e.vid, i)); err != nil {
			return err
		}
	}
	tmps = nil
	return fs.SyncDir(e.dir)
}
