package volume

import (
	"context"
	"errors"
	"fmt"
	"io"

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
			if e.tombstone {
				ix.remove(e.key, e.size)
			} else {
				ix.put(e.key, e.size, e.off, e.length)
			}
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

// scanTail indexes the needles in [from, size) of the .dat. A batch whose
// last needle is missing or torn, and anything after the last valid
// needle, is cut off. A damaged stretch followed by valid needles is not a
// torn tail: it is skipped (and counted) and the scan goes on, so no
// acknowledged needle after it is lost.
func (v *Volume) scanTail(ctx context.Context, from, size int64) error {
	s := NewScanner(v.dat, from, size)
	var batch []idxEntry
	var recs []byte
	batchStart := from
	ix := v.mu.index
	flush := func() {
		for _, e := range batch {
			if e.tombstone {
				ix.remove(e.key, e.size)
			} else {
				ix.put(e.key, e.size, e.off, e.length)
			}
			recs = appendIdxRecord(recs, e)
		}
		v.needles.Add(int64(len(batch)))
		batch = batch[:0]
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if !needle.IsCorruption(err) {
				return err
			}
			at := s.Pos()
			found, rerr := s.Resync()
			if rerr != nil {
				return rerr
			}
			if !found {
				break // torn tail
			}
			// Damage in the middle: keep the intact needles of the batch
			// around it (later data exists, so the batch was written) and
			// carry on from the next valid needle.
			flush()
			v.corrupt.Add(s.Pos() - at)
			batchStart = s.Pos()
			continue
		}
		batch = append(batch, idxEntry{
			key: n.Key, size: uint32(n.Size), off: uint32(s.Offset() / 8),
			length: uint32(s.Len() / 8), tombstone: n.IsTombstone(),
		})
		if n.Flags&needle.FlagBatchContinues == 0 {
			flush()
			batchStart = s.Pos()
		}
	}
	// Whatever follows the last complete batch was never acknowledged.
	cut := s.Pos()
	if len(batch) > 0 {
		cut = batchStart
	}
	if cut < size {
		if err := v.dat.Truncate(cut); err != nil {
			return fmt.Errorf("truncate torn tail at %d: %w", cut, err)
		}
		if err := v.dat.Sync(); err != nil {
			return fmt.Errorf("sync after truncating torn tail: %w", err)
		}
		size = cut
	}
	v.tail.Store(size)
	v.appendIdx(recs)
	return nil
}
