package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// Damage is a stretch of a volume file that does not hold valid needles.
type Damage struct {
	Start int64  `json:"start"`
	End   int64  `json:"end"`
	Cause string `json:"cause"`
}

// FileReport describes a volume file as read from disk alone, for operator
// tools. Needle counts include tombstones.
type FileReport struct {
	Path       string   `json:"path"`
	Vid        uint32   `json:"vid"`
	Generation uint32   `json:"generation"`
	Size       int64    `json:"size"`
	Needles    int      `json:"needles"`
	Live       int      `json:"live"`       // live images
	LiveBytes  int64    `json:"live_bytes"` // bytes of live needles
	Dead       int      `json:"dead"`       // reclaimable: deleted, overwritten, superseded tombstones
	DeadBytes  int64    `json:"dead_bytes"`
	Corrupt    []Damage `json:"corrupt,omitempty"`   // damaged stretches valid needles follow
	TornTail   *Damage  `json:"torn_tail,omitempty"` // what recovery would move aside and cut off

	// Tombstones in force (permanent: compaction keeps them).
	Tombstones     int   `json:"tombstones"`
	TombstoneBytes int64 `json:"tombstone_bytes"`
}

// Healthy reports whether the file has no damage and no torn tail.
func (r *FileReport) Healthy() bool { return len(r.Corrupt) == 0 && r.TornTail == nil }

// NeedleInfo is one needle as InspectFile's second pass finds it.
type NeedleInfo struct {
	Offset int64
	Length int
	Needle needle.Needle // Data is valid only during the callback
	Live   bool          // the needle is what a read of its key and size returns
}

// InspectOptions tune InspectFile. The zero value is usable.
type InspectOptions struct {
	// FS is the file system; default vfs.Default.
	FS vfs.FS
	// Progress, when set, is called with the bytes read so far and the
	// bytes to read (both passes count).
	Progress func(done, total int64)
	// Each, when set, makes InspectFile read the file a second time and
	// call Each for every intact needle in file order (torn-tail needles
	// excluded). Returning an error stops the walk with that error.
	Each func(NeedleInfo) error
}

// ParseDatPath returns the directory and vid of a path "<dir>/<vid>.dat".
func ParseDatPath(path string) (dir string, vid uint32, err error) {
	base, ok := strings.CutSuffix(filepath.Base(path), ".dat")
	n, perr := strconv.ParseUint(base, 10, 32)
	if !ok || perr != nil || strconv.FormatUint(n, 10) != base {
		return "", 0, fmt.Errorf("volume: %s is not named <vid>.dat", path)
	}
	return filepath.Dir(path), uint32(n), nil
}

// InspectFile reads the volume file at path from disk alone, verifying
// every needle's checksum, and reports its live, dead and damaged contents.
// It never changes the file. It is meant for stopped stores (or files
// copied out of one); on a running store's file it sees a moment's state.
func InspectFile(ctx context.Context, path string, opts InspectOptions) (FileReport, error) {
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	rep := FileReport{Path: path}
	f, err := opts.FS.Open(path)
	if err != nil {
		return rep, err
	}
	defer f.Close()
	if rep.Size, err = f.Size(); err != nil {
		return rep, err
	}
	sb := make([]byte, SuperblockSize)
	if n, err := f.ReadAt(sb, 0); n < SuperblockSize {
		if err == nil || errors.Is(err, io.EOF) {
			return rep, fmt.Errorf("%w: %s is %d bytes", ErrNotVolume, path, rep.Size)
		}
		return rep, err
	}
	super, err := DecodeSuperblock(sb)
	if err != nil {
		return rep, fmt.Errorf("%s: %w", path, err)
	}
	rep.Vid, rep.Generation = super.Vid, super.Generation
	format, err := super.Format()
	if err != nil {
		return rep, fmt.Errorf("%s: %w", path, err)
	}
	total := rep.Size - SuperblockSize
	if opts.Each != nil {
		total *= 2
	}
	ix := newIndex()
	defer ix.release()
	var read int64
	res, err := walk(ctx, f, format, SuperblockSize, rep.Size, walkVisitor{
		batch: func(batch []idxEntry) {
			for _, e := range batch {
				rep.Needles++
				ix.apply(e)
				read = e.end() - SuperblockSize
			}
			if opts.Progress != nil {
				opts.Progress(read, total)
			}
		},
		damage: func(start, end int64, err error) {
			rep.Corrupt = append(rep.Corrupt, Damage{Start: start, End: end, Cause: err.Error()})
		},
	})
	if err != nil {
		return rep, err
	}
	if res.validEnd < rep.Size {
		rep.TornTail = &Damage{Start: res.validEnd, End: rep.Size, Cause: res.tornErr.Error()}
	}
	rep.Live = ix.len()
	rep.LiveBytes = int64(ix.liveUnits()) * needle.Alignment
	rep.Tombstones = ix.tombs.len()
	rep.TombstoneBytes = int64(ix.tombs.units) * needle.Alignment
	rep.Dead = rep.Needles - rep.Live - rep.Tombstones
	var damaged int64
	for _, d := range rep.Corrupt {
		damaged += d.End - d.Start
	}
	rep.DeadBytes = res.validEnd - SuperblockSize - rep.LiveBytes - rep.TombstoneBytes - damaged
	if opts.Progress != nil && opts.Each == nil {
		opts.Progress(total, total)
	}
	if opts.Each == nil {
		return rep, nil
	}

	// Second pass: every intact needle with its live status.
	s := NewScanner(f, format, SuperblockSize, res.validEnd)
	half := total / 2
	for i := 0; ; i++ {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			if opts.Progress != nil {
				opts.Progress(half+s.Pos()-SuperblockSize, total)
			}
		}
		n, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if !needle.IsCorruption(err) {
				return rep, err
			}
			if found, rerr := s.Resync(); rerr != nil || !found {
				break
			}
			continue
		}
		off, length, ok := ix.get(n.Key, uint32(n.Size))
		live := ok && !n.IsTombstone() && int64(off)*needle.Alignment == s.Offset() && int(length)*needle.Alignment == s.Len()
		if err := opts.Each(NeedleInfo{Offset: s.Offset(), Length: s.Len(), Needle: n, Live: live}); err != nil {
			return rep, err
		}
	}
	if opts.Progress != nil {
		opts.Progress(total, total)
	}
	return rep, nil
}

// DirLockFile is the file in a data directory whose exclusive lock a
// running store holds; the offline tools that change files take it too, so
// they refuse to work under a running store.
const DirLockFile = "LOCK"

// lockDir takes the data directory's lock for an offline tool.
func lockDir(fs vfs.FS, dir string) (io.Closer, error) {
	l, err := fs.Lock(filepath.Join(dir, DirLockFile))
	if errors.Is(err, vfs.ErrLocked) {
		return nil, fmt.Errorf("volume: %s is in use by a running store or another tool; stop it first, or use the online commands: %w", dir, err)
	}
	return l, err
}

// Reindex rebuilds the idx of the volume file at path from the .dat alone
// and atomically replaces the old idx (write a temporary file, sync,
// rename, sync the directory). It does not change the .dat: a torn tail is
// left for the store to move aside and cut when it opens the volume. It
// holds the data directory's lock meanwhile, so it refuses to run under a
// running store. It returns the number of idx records written.
func Reindex(ctx context.Context, path string, fs vfs.FS) (int, error) {
	if fs == nil {
		fs = vfs.Default
	}
	dir, vid, err := ParseDatPath(path)
	if err != nil {
		return 0, err
	}
	lock, err := lockDir(fs, dir)
	if err != nil {
		return 0, err
	}
	defer lock.Close()
	f, err := fs.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return 0, err
	}
	sb := make([]byte, SuperblockSize)
	if n, _ := f.ReadAt(sb, 0); n < SuperblockSize {
		return 0, fmt.Errorf("%w: %s is %d bytes", ErrNotVolume, path, size)
	}
	super, err := DecodeSuperblock(sb)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if super.Vid != vid {
		return 0, fmt.Errorf("%w: %s holds volume %d", ErrNotVolume, path, super.Vid)
	}
	format, err := super.Format()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	recs := encodeIdxHeader(super.Vid, super.Generation)
	count := 0
	if _, err := walk(ctx, f, format, SuperblockSize, size, walkVisitor{
		batch: func(batch []idxEntry) {
			for _, e := range batch {
				recs = appendIdxRecord(recs, e)
			}
			count += len(batch)
		},
	}); err != nil {
		return 0, err
	}
	if err := vfs.WriteFileAtomic(fs, IdxPath(dir, vid), recs); err != nil {
		return 0, fmt.Errorf("write idx: %w", err)
	}
	return count, nil
}

// CompactFile compacts the volume file at path offline (see
// Volume.Compact): it opens the volume, which recovers it, compacts it and
// closes it. It holds the data directory's lock meanwhile, so it refuses
// to run under a running store.
func CompactFile(ctx context.Context, path string, opts Options, copts CompactOptions) (CompactResult, error) {
	dir, vid, err := ParseDatPath(path)
	if err != nil {
		return CompactResult{}, err
	}
	fs := opts.FS
	if fs == nil {
		fs = vfs.Default
	}
	lock, err := lockDir(fs, dir)
	if err != nil {
		return CompactResult{}, err
	}
	defer lock.Close()
	v, err := Open(ctx, dir, vid, opts)
	if err != nil {
		return CompactResult{}, err
	}
	res, err := v.Compact(ctx, copts)
	if cerr := v.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return res, err
}
