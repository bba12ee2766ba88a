package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// idxLoadChunk is how many idx records Open reads, or the tail scan
// writes, at a time: the only buffer loading needs besides the index, so
// that a volume of any size loads in a fixed amount of transient memory.
const idxLoadChunk = 16 << 10

// recover reads the superblock, loads the idx hint and indexes the tail of
// the .dat the idx does not cover. It runs before the volume is shared.
func (v *Volume) recover(ctx context.Context) error {
	size, err := v.dat.Size()
	if err != nil {
		return err
	}
	sbBuf := make([]byte, SuperblockSize)
	if n, err := v.dat.ReadAt(sbBuf, 0); n < SuperblockSize {
		if err == nil || errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: file is %d bytes", ErrNotVolume, size)
		}
		return err
	}
	if v.super, err = DecodeSuperblock(sbBuf); err != nil {
		return err
	}
	if v.super.Vid != v.vid {
		return fmt.Errorf("%w: superblock names volume %d", ErrNotVolume, v.super.Vid)
	}
	if v.format, err = v.super.Format(); err != nil {
		return err
	}
	scanFrom, err := v.loadIdx(ctx, size)
	if err != nil {
		return err
	}
	return v.scanTail(ctx, scanFrom, size)
}

// loadIdx opens (or starts) the idx and applies its valid prefix to the
// index. It returns where the .dat scan must start.
func (v *Volume) loadIdx(ctx context.Context, datSize int64) (int64, error) {
	f, err := v.opts.FS.OpenReadWrite(v.idxPath)
	if err != nil {
		return 0, fmt.Errorf("idx: %w", err)
	}
	v.idx = f
	idxSize, err := f.Size()
	if err != nil {
		return 0, fmt.Errorf("idx: %w", err)
	}
	hdr := make([]byte, idxRecordSize)
	fresh := idxSize < idxRecordSize
	if !fresh {
		if _, err := f.ReadAt(hdr, 0); err != nil {
			return 0, fmt.Errorf("idx: %w", err)
		}
		vid, gen, ok := decodeIdxHeader(hdr)
		fresh = !ok || vid != v.vid || gen != v.super.Generation
	}
	if fresh {
		// Missing, damaged or stale: rebuild from the .dat alone.
		if err := f.Truncate(0); err != nil {
			return 0, fmt.Errorf("idx: %w", err)
		}
		if _, err := f.WriteAt(encodeIdxHeader(v.vid, v.super.Generation), 0); err != nil {
			return 0, fmt.Errorf("idx: %w", err)
		}
		v.idxBytes = idxRecordSize
		return SuperblockSize, nil
	}

	scanFrom := int64(SuperblockSize)
	pos := int64(idxRecordSize)
	buf := make([]byte, idxLoadChunk*idxRecordSize)
	ix := v.mu.index
load:
	for pos+idxRecordSize <= idxSize {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		n, err := f.ReadAt(buf, pos)
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("idx: %w", err)
		}
		n -= n % idxRecordSize
		if n == 0 {
			break
		}
		for i := 0; i < n; i += idxRecordSize {
			e, ok := decodeIdxRecord(buf[i : i+idxRecordSize])
			if !ok || e.end() > datSize {
				break load // torn or damaged hint: the scan covers the rest
			}
			ix.apply(e)
			v.needles.Add(1)
			scanFrom = max(scanFrom, e.end())
			pos += idxRecordSize
		}
	}
	if pos != idxSize {
		if err := f.Truncate(pos); err != nil {
			return 0, fmt.Errorf("idx: %w", err)
		}
	}
	v.idxBytes = pos
	return scanFrom, nil
}

// scanTail indexes the needles in [from, size) of the .dat (see walk) and
// appends their idx records. What follows the last complete batch (a round
// that reached the disk only in part, or a batch whose last needle is
// damaged, whose other needles may have been acknowledged) is moved aside
// into a file of its own (see TornPath) before it is cut off the .dat, so no
// byte that may have been acknowledged is ever lost.
//
// The idx records of the tail are appended as the scan goes, a chunk at a
// time, not gathered for the whole tail: a volume whose idx is lost is
// rebuilt in a fixed amount of memory besides its index. They are all for
// complete batches before the torn tail, so writing them before the tail
// is moved aside changes nothing a later open reads.
func (v *Volume) scanTail(ctx context.Context, from, size int64) error {
	var recs []byte
	ix := v.mu.index
	res, err := walk(ctx, v.dat, v.format, from, size, walkVisitor{
		strict: true,
		batch: func(batch []idxEntry) {
			for _, e := range batch {
				ix.apply(e)
				recs = appendIdxRecord(recs, e)
			}
			v.needles.Add(int64(len(batch)))
			if len(recs) >= idxLoadChunk*idxRecordSize {
				v.appendIdx(recs)
				recs = recs[:0]
			}
		},
		damage: func(start, end int64, _ error) { v.corrupt.Add(end - start) },
	})
	if err != nil {
		return err
	}
	if res.validEnd < size {
		if err := v.moveAside(ctx, res.validEnd, size); err != nil {
			return fmt.Errorf("move torn tail [%d, %d) aside: %w", res.validEnd, size, err)
		}
		if err := v.dat.Truncate(res.validEnd); err != nil {
			return fmt.Errorf("truncate torn tail at %d: %w", res.validEnd, err)
		}
		if err := v.dat.Sync(); err != nil {
			return fmt.Errorf("sync after truncating torn tail: %w", err)
		}
		v.corrupt.Add(size - res.validEnd)
		size = res.validEnd
	}
	v.tail.Store(size)
	v.appendIdx(recs)
	return nil
}

// TornPath returns the path of the file that keeps bytes [off, ...) of
// volume vid's .dat, moved aside by recovery at the given time: the torn
// tail, which may hold needles of a batch that was acknowledged before its
// last needle was damaged. Stores ignore these files; they are there for an
// operator (they hold raw needle bytes, without a superblock).
func TornPath(dir string, vid uint32, off int64, at time.Time) string {
	return fmt.Sprintf("%s.torn-%d-%d", DatPath(dir, vid), off, at.UnixNano())
}

// moveAside copies .dat bytes [from, to) into a new file (see TornPath),
// made durable before it returns: written as a temporary file, synced,
// renamed, and the directory synced.
func (v *Volume) moveAside(ctx context.Context, from, to int64) error {
	fs := v.opts.FS
	path := TornPath(v.dir, v.vid, from, v.opts.Now())
	tmp := path + ".tmp"
	f, err := fs.Create(tmp)
	if err != nil {
		return err
	}
	buf := make([]byte, min(to-from, copyChunk))
	for off := from; off < to; {
		if err := ctx.Err(); err != nil {
			f.Close()
			fs.Remove(tmp)
			return err
		}
		n := int(min(int64(len(buf)), to-off))
		got, err := v.dat.ReadAt(buf[:n], off)
		if got < n {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			f.Close()
			fs.Remove(tmp)
			return err
		}
		if _, err := f.WriteAt(buf[:n], off-from); err != nil {
			f.Close()
			fs.Remove(tmp)
			return err
		}
		off += int64(n)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		fs.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		fs.Remove(tmp)
		return err
	}
	if err := fs.Rename(tmp, path); err != nil {
		fs.Remove(tmp)
		return err
	}
	return fs.SyncDir(v.dir)
}

// walkVisitor receives what walk finds. Either function may be nil.
type walkVisitor struct {
	// strict drops every batch that damage touches: its intact needles
	// before the damage and after it, up to the batch's last needle.
	// Recovery of the unindexed tail is strict, because there a damaged
	// stretch may be a round whose pages reached the disk only in part,
	// which was never acknowledged; a batch must land whole or not at
	// all. Inspection and idx rebuilds are lenient: they keep every
	// intact needle.
	strict bool
	// batch receives each complete batch of needles, in file order.
	batch func([]idxEntry)
	// damage receives each damaged stretch that valid needles follow.
	damage func(start, end int64, err error)
}

type walkResult struct {
	validEnd int64 // end of the last complete batch: the torn tail starts here
	tornErr  error // why the tail is torn, when validEnd < end
}

// walk reads the needles in [from, end) of f. A batch (needles linked by
// the batch-continues flag) is handed on only when its last needle is
// found. A damaged stretch followed by a valid needle is not a torn tail:
// it is reported and the walk goes on, so no batch after it is lost.
//
// Every batch other than the one the damage interrupted is kept whole,
// whichever needle of it is damaged. To know where the damaged batch ends,
// walk asks the needle found after the damage whether it starts a batch:
//
//   - A tombstone is always a batch of its own, in both formats.
//   - In format 2 the header magic says it (needle.BatchStart): a needle
//     that starts a batch is kept with its batch; one that does not
//     belongs to the damaged batch.
//   - In format 1 (which does not record it) walk follows the headers of
//     the damaged stretch: when they decode and lead exactly to the next
//     needle, the last one's batch-continues flag says whether the next
//     needle finishes the damaged batch. When they do not, the next
//     needle is taken to start a batch, so no intact batch is lost.
//
// In strict mode the damaged batch is dropped whole; in lenient mode its
// intact needles are kept. A batch that meets a needle starting another
// batch (or a tombstone) before its own last needle never got its end: it
// is torn like a damaged one. Whatever follows the last complete batch is
// the torn tail, reported as validEnd.
func walk(ctx context.Context, f vfs.File, format needle.Format, from, end int64, vis walkVisitor) (walkResult, error) {
	s := NewScanner(f, format, from, end)
	var batch []idxEntry
	res := walkResult{validEnd: from}
	// open: a batch has begun and its last needle is not seen yet. The walk
	// may start inside a batch whose first needles the idx hint indexed
	// (idx records are written only once their whole round is durable), so
	// it starts open: needles before the first batch start are kept as the
	// rest of that batch.
	open := true
	dropping := false // strict: the open batch is damaged and is dropped
	flush := func() {
		if len(batch) > 0 && vis.batch != nil {
			vis.batch(batch)
		}
		batch = batch[:0]
	}
	// torn ends the open batch without its last needle.
	torn := func() {
		if vis.strict {
			batch = batch[:0]
		} else {
			flush()
		}
		open, dropping = false, false
	}
	for i := 0; ; i++ {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return res, err
			}
		}
		n, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if !needle.IsCorruption(err) {
				return res, err
			}
			at := s.Pos()
			found, rerr := s.Resync()
			if rerr != nil {
				return res, rerr
			}
			if !found {
				res.tornErr = err
				break
			}
			if vis.damage != nil {
				vis.damage(at, s.Pos(), err)
			}
			torn()
			if !format.MarksBatchStart() {
				// Format 1: read what the damaged needles' headers say.
				chainEnd, flags, ok, herr := s.headerChainEnd(at, s.Pos())
				if herr != nil {
					return res, herr
				}
				if ok && chainEnd == s.Pos() && flags&needle.FlagBatchContinues != 0 {
					open, dropping = true, vis.strict
				}
			}
			if !open {
				res.validEnd = s.Pos()
			}
			continue
		}
		starts := n.IsTombstone() || n.BatchStart
		if open && starts {
			torn() // the open batch never got its last needle
			res.validEnd = s.Offset()
		}
		if !open {
			open = true
			// A format-2 needle that does not start a batch, with no
			// batch open, is what is left of a damaged batch.
			dropping = vis.strict && format.MarksBatchStart() && !starts
		}
		if !dropping {
			batch = append(batch, idxEntry{
				key: n.Key, size: uint32(n.Size), off: uint32(s.Offset() / 8),
				length: uint32(s.Len() / 8), tombstone: n.IsTombstone(),
			})
		}
		if n.Flags&needle.FlagBatchContinues == 0 || n.IsTombstone() {
			if dropping {
				batch = batch[:0]
			} else {
				flush()
			}
			open, dropping = false, false
			res.validEnd = s.Pos()
		}
	}
	if res.tornErr == nil && res.validEnd < end {
		res.tornErr = fmt.Errorf("%w: batch at %d has no last needle", needle.ErrShort, res.validEnd)
	}
	return res, nil
}
