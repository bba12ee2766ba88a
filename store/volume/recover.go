package volume

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// idxLoadChunk is how many idx records Open reads at a time.
const idxLoadChunk = 64 << 10

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

// scanTail indexes the needles in [from, size) of the .dat (see walk),
// appends their idx records and cuts off a torn tail.
func (v *Volume) scanTail(ctx context.Context, from, size int64) error {
	var recs []byte
	ix := v.mu.index
	res, err := walk(ctx, v.dat, from, size, walkVisitor{
		strict: true,
		batch: func(batch []idxEntry) {
			for _, e := range batch {
				ix.apply(e)
				recs = appendIdxRecord(recs, e)
			}
			v.needles.Add(int64(len(batch)))
		},
		damage: func(start, end int64, _ error) { v.corrupt.Add(end - start) },
	})
	if err != nil {
		return err
	}
	// Whatever follows the last complete batch was never acknowledged.
	if res.validEnd < size {
		if err := v.dat.Truncate(res.validEnd); err != nil {
			return fmt.Errorf("truncate torn tail at %d: %w", res.validEnd, err)
		}
		if err := v.dat.Sync(); err != nil {
			return fmt.Errorf("sync after truncating torn tail: %w", err)
		}
		size = res.validEnd
	}
	v.tail.Store(size)
	v.appendIdx(recs)
	return nil
}

// walkVisitor receives what walk finds. Either function may be nil.
type walkVisitor struct {
	// strict drops every batch that damage touches: the intact needles of
	// the batch before the damage and those after it up to the batch's
	// last needle. Recovery of the unindexed tail is strict, because there
	// a damaged stretch is most likely a round whose pages reached the disk
	// only in part, which was never acknowledged; a batch must land whole
	// or not at all. Inspection and idx rebuilds are lenient: they keep
	// every intact needle.
	strict bool
	// batch receives each complete batch of needles, in file order.
	batch func([]idxEntry)
	// damage receives each damaged stretch that valid needles follow.
	damage func(start, end int64, err error)
}

type walkResult struct {
	validEnd  int64 // end of the last complete batch: the torn tail starts here
	tornErr   error // why the tail is torn, when validEnd < end
	lastBatch int64 // start of the last complete batch
}

// walk reads the needles in [from, end) of f. A batch (needles linked by
// the batch-continues flag) is handed on only when its last needle is
// found. A damaged stretch followed by a valid needle is not a torn tail:
// it is reported and the walk goes on, so no batch after it is lost; the
// batch around the damage is dropped (strict) or kept in its intact
// needles (lenient), see walkVisitor. Whatever follows the last complete
// batch is the torn tail, reported as validEnd.
func walk(ctx context.Context, f vfs.File, from, end int64, vis walkVisitor) (walkResult, error) {
	s := NewScanner(f, from, end)
	var batch []idxEntry
	res := walkResult{validEnd: from, lastBatch: from}
	batchStart := from
	skipping := false
	flush := func() {
		if len(batch) > 0 && vis.batch != nil {
			vis.batch(batch)
		}
		batch = batch[:0]
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
			if vis.strict {
				batch = batch[:0]
				skipping = true
			} else {
				flush()
			}
			if vis.damage != nil {
				vis.damage(at, s.Pos(), err)
			}
			batchStart, res.validEnd = s.Pos(), s.Pos()
			continue
		}
		if skipping {
			// The rest of the damaged batch: skip up to its last needle.
			if n.Flags&needle.FlagBatchContinues == 0 {
				skipping = false
			}
			batchStart, res.validEnd = s.Pos(), s.Pos()
			continue
		}
		batch = append(batch, idxEntry{
			key: n.Key, size: uint32(n.Size), off: uint32(s.Offset() / 8),
			length: uint32(s.Len() / 8), tombstone: n.IsTombstone(),
		})
		if n.Flags&needle.FlagBatchContinues == 0 {
			flush()
			res.lastBatch = batchStart
			batchStart, res.validEnd = s.Pos(), s.Pos()
		}
	}
	if res.tornErr == nil && res.validEnd < end {
		res.tornErr = fmt.Errorf("%w: batch at %d has no last needle", needle.ErrShort, batchStart)
	}
	return res, nil
}
