package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// ErrCompacting is returned when a compaction is already running.
var ErrCompacting = errors.New("volume: compaction already running")

// CompactOptions tune Compact. The zero value is usable.
type CompactOptions struct {
	// Progress, when set, is called with the live bytes copied so far and
	// the live bytes to copy.
	Progress func(done, total int64)
}

// CompactResult reports what a compaction did.
type CompactResult struct {
	Vid           uint32
	Generation    uint32 // the new compaction generation
	SizeBefore    int64
	SizeAfter     int64
	Reclaimed     int64 // SizeBefore - SizeAfter, counting writes made meanwhile
	Copied        int   // live needles copied
	CaughtUp      int64 // bytes appended during the compaction and carried over
	CorruptNeedle int   // damaged live needles found and left out
	Duration      time.Duration
}

// compactSuffix names the files a compaction builds before the swap. They
// end in .tmp so a store that restarts mid-compaction removes them.
const compactSuffix = ".compact.tmp"

// Compact rewrites the volume keeping only live needles, while it keeps
// serving reads and accepting writes and deletes:
//
//  1. Under the commit lock, note the durable end of the file and the live
//     entries. Writes then go on appending to the old file.
//  2. Copy the live needles, in (key, size) order so the new index packs
//     every photo, into <vid>.dat.compact.tmp behind a superblock with the
//     next generation, writing the new idx beside it; then every tombstone
//     (tombstones are permanent, see Tombstones).
//  3. Copy the bytes appended meanwhile (needles and tombstones, verbatim),
//     first without the commit lock, then the last stretch under it.
//  4. Still under the commit lock: sync both new files, rename the idx and
//     then the .dat into place, sync the directory, and swap the files and
//     index under the read lock.
//
// A crash at any moment leaves either the old or the new volume complete:
// until the .dat rename is durable the old files are untouched (an idx
// already renamed carries the new generation, so it is ignored and rebuilt
// from the old .dat); after it, the new .dat is complete and synced.
//
// Needles are copied byte for byte, so their checksums (and ETags) do not
// change, except the needles of a batch that lost members to deletes or
// rewrites: those are re-encoded with no batch flags (each whole on its
// own), which changes their checksums but not their content or append
// time. A damaged live
// needle is left out and counted in the result: read it from a replica. A
// read-only volume that is compacted becomes sealed.
func (v *Volume) Compact(ctx context.Context, opts CompactOptions) (res CompactResult, err error) {
	if !v.compacting.CompareAndSwap(false, true) {
		return res, ErrCompacting
	}
	defer v.compacting.Store(false)
	start := time.Now()
	res.Vid = v.vid

	// 1. Snapshot.
	if err := v.lead(); err != nil {
		return res, err
	}
	snapTail := v.tail.Load()
	res.SizeBefore = snapTail
	var entries []idxEntry
	var total int64
	v.mu.RLock()
	v.mu.index.ascend(func(key uint64, size, off, length uint32) bool {
		entries = append(entries, idxEntry{key: key, size: size, off: off, length: length})
		total += int64(length) * needle.Alignment
		return true
	})
	var tombs []excEntry
	v.mu.index.eachTombstone(func(e excEntry) bool {
		tombs = append(tombs, e)
		return true
	})
	v.mu.RUnlock()
	state, reason := v.State()
	v.commit.release()
	if state == StateFailed {
		return res, fmt.Errorf("volume %d: %w: %s", v.vid, ErrReadOnly, reason)
	}

	newSuper := v.super
	newSuper.Generation++
	datTmp := DatPath(v.dir, v.vid) + compactSuffix
	idxTmp := IdxPath(v.dir, v.vid) + compactSuffix
	b := &compactBuilder{fs: v.opts.FS, format: v.format, ix: newIndex()}
	defer b.abort(datTmp, idxTmp)
	if err := b.create(datTmp, idxTmp, newSuper); err != nil {
		return res, fmt.Errorf("volume %d: compact: %w", v.vid, err)
	}

	// 2. Copy live needles. A batch whose needles are copied back to back
	// and in their order (the common case: a photo's four sizes) is
	// copied verbatim, so checksums and ETags do not change; the needles
	// of a batch broken by deletes or rewrites are re-encoded as batches
	// of their own (flags cleared), so recovery never sees a batch
	// without its last needle.
	type held struct {
		raw []byte
		n   needle.Needle
		e   idxEntry
	}
	var pend []held
	flush := func(intact bool) error {
		for i, h := range pend {
			var err error
			if intact {
				err = b.appendRaw(h.raw, &h.n, i == 0)
			} else {
				n := h.n
				n.Flags, n.BatchStart = 0, true
				err = b.appendNeedle(&n)
			}
			if err != nil {
				return err
			}
		}
		pend = pend[:0]
		return nil
	}
	var buf []byte
	var done int64
	for i, e := range entries {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			if opts.Progress != nil {
				opts.Progress(done, total)
			}
		}
		var n needle.Needle
		v.mu.RLock()
		if v.mu.closed {
			v.mu.RUnlock()
			return res, ErrClosed
		}
		n, buf, err = v.readAtLocked(e.off, e.length, buf)
		v.mu.RUnlock()
		if err == nil {
			n, err = verifyRead(n, e.key, needle.SizeCode(e.size))
		}
		if err != nil {
			if IsCorruption(err) {
				res.CorruptNeedle++
				continue
			}
			return res, fmt.Errorf("volume %d: compact: read key %x: %w", v.vid, e.key, err)
		}
		res.Copied++
		done += int64(e.length) * needle.Alignment
		if len(pend) > 0 && pend[len(pend)-1].e.end() != int64(e.off)*needle.Alignment {
			if err := flush(false); err != nil {
				return res, fmt.Errorf("volume %d: compact: %w", v.vid, err)
			}
		}
		continues := n.Flags&needle.FlagBatchContinues != 0
		if !continues && len(pend) == 0 {
			if err := b.appendRaw(buf, &n, true); err != nil {
				return res, fmt.Errorf("volume %d: compact: %w", v.vid, err)
			}
			continue
		}
		raw := bytes.Clone(buf)
		n.Data = raw[needle.HeaderSize : needle.HeaderSize+len(n.Data)]
		pend = append(pend, held{raw: raw, n: n, e: e})
		if !continues {
			if err := flush(true); err != nil { // the batch's last needle: whole
				return res, fmt.Errorf("volume %d: compact: %w", v.vid, err)
			}
		}
	}
	if err := flush(false); err != nil {
		return res, fmt.Errorf("volume %d: compact: %w", v.vid, err)
	}
	// Tombstones are permanent (see Tombstones): copy every one, verbatim,
	// so a write of a deleted key that lands later stays deleted and
	// replicas still agree on what was deleted.
	for i, e := range tombs {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return res, err
			}
		}
		if err := v.copyTombstone(b, e, &buf); err != nil {
			return res, fmt.Errorf("volume %d: compact: %w", v.vid, err)
		}
	}
	if opts.Progress != nil {
		opts.Progress(total, total)
	}

	// 3. Catch up with what was appended meanwhile, without stopping
	// writes, then the rest under the commit lock.
	from := snapTail
	for pass := 0; pass < 8 && v.tail.Load()-from > catchUpLocked; pass++ {
		if from, err = b.catchUp(v.dat, from, v.tail.Load()); err != nil {
			return res, fmt.Errorf("volume %d: compact: catch up: %w", v.vid, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if err := v.lead(); err != nil {
		return res, err
	}
	defer v.commit.release()
	end := v.tail.Load()
	if _, err = b.catchUp(v.dat, from, end); err != nil {
		return res, fmt.Errorf("volume %d: compact: catch up: %w", v.vid, err)
	}
	res.CaughtUp = end - snapTail

	// 4. Make the new files durable and swap them in.
	if err := b.finish(); err != nil {
		return res, fmt.Errorf("volume %d: compact: %w", v.vid, err)
	}
	if err := v.opts.FS.Rename(idxTmp, v.idxPath); err != nil {
		return res, fmt.Errorf("volume %d: compact: %w", v.vid, err)
	}
	if err := v.opts.FS.Rename(datTmp, DatPath(v.dir, v.vid)); err != nil {
		// The old .dat is intact; the idx just renamed names the new
		// generation, so the next open rebuilds the idx from the old .dat.
		return res, fmt.Errorf("volume %d: compact: %w", v.vid, err)
	}
	if err := v.opts.FS.SyncDir(v.dir); err != nil {
		// Either name may survive a crash and both files are complete;
		// this process can go on with the new ones.
		v.fail(fmt.Errorf("sync directory after compaction swap: %w", err))
	}
	newMap := v.mapCurrent(b.dat, b.tail)
	v.mu.Lock()
	if v.mu.closed {
		// Close cannot run while this holds the round lock, so this is
		// only defensive; the new files stay in place and are complete.
		v.mu.Unlock()
		if newMap != nil {
			newMap.release()
		}
		return res, ErrClosed
	}
	oldDat, oldIdx, oldMap := v.dat, v.idx, v.mu.dmap
	v.dat, v.idx, v.idxBytes, v.idxErr = b.dat, b.idx, b.idxBytes, nil
	v.mu.dmap = newMap
	// The old index's memory is freed now, under the write lock, so no
	// reader can be using it.
	v.mu.index.release()
	v.mu.index = b.ix
	v.super = newSuper
	v.tail.Store(b.tail)
	v.needles.Store((b.idxBytes - idxRecordSize) / idxRecordSize)
	v.mu.Unlock()
	b.dat, b.idx = nil, nil // now owned by the volume
	if oldMap != nil {
		// The old generation stays mapped until the answers being written
		// from it release their Refs; its verified mappings go now, so its
		// descriptor closes with the last answer.
		v.opts.Pins.dropMap(oldMap)
		oldMap.release()
	}
	oldDat.Close()
	if oldIdx != nil {
		oldIdx.Close()
	}
	v.markMu.Lock()
	if s, _ := v.State(); s == StateReadOnly {
		if err := vfs.WriteFileAtomic(v.opts.FS, readOnlyPath(v.dir, v.vid), []byte(sealedReason)); err == nil {
			v.setState(StateSealed, sealedReason)
		}
	}
	v.markMu.Unlock()
	res.Generation = newSuper.Generation
	res.SizeAfter = b.tail
	res.Reclaimed = end - b.tail
	res.Duration = time.Since(start)
	return res, nil
}

// copyTombstone appends the tombstone at e to the new volume, byte for byte.
// A damaged tombstone is written again from what the index knows (key and
// size code, with a zero cookie and the current time): a delete is never
// lost.
func (v *Volume) copyTombstone(b *compactBuilder, e excEntry, buf *[]byte) error {
	v.mu.RLock()
	if v.mu.closed {
		v.mu.RUnlock()
		return ErrClosed
	}
	n, raw, err := v.readAtLocked(e.off, e.length, *buf)
	v.mu.RUnlock()
	*buf = raw
	if err == nil && n.IsTombstone() && n.Key == e.key && uint32(n.Size) == e.size {
		b.add(idxEntry{key: e.key, size: e.size, off: uint32(b.tail / needle.Alignment), length: uint32(len(raw) / needle.Alignment), tombstone: true})
		b.pending = append(b.pending, raw...)
	} else {
		if err != nil && !IsCorruption(err) {
			return fmt.Errorf("read tombstone of key %x: %w", e.key, err)
		}
		t := &needle.Needle{Key: e.key, Size: needle.SizeCode(e.size), Flags: needle.FlagTombstone, AppendTime: v.opts.Now().UnixNano(), BatchStart: true}
		if b.enc, err = b.format.Append(b.enc[:0], t); err != nil {
			return err
		}
		b.add(idxEntry{key: e.key, size: e.size, off: uint32(b.tail / needle.Alignment), length: uint32(len(b.enc) / needle.Alignment), tombstone: true})
		b.pending = append(b.pending, b.enc...)
	}
	if len(b.pending) >= compactFlush {
		return b.flush()
	}
	return nil
}

// sealedReason is the read-only marker's content for a sealed volume.
const sealedReason = "sealed"

// compactBuilder writes a new volume and its idx.
type compactBuilder struct {
	fs       vfs.FS
	format   needle.Format // the volume's needle format (its secret is kept)
	dat, idx vfs.File
	ix       *index
	tail     int64
	idxBytes int64
	pending  []byte // needle bytes not yet written
	recs     []byte // idx records not yet written
	enc      []byte
}

const compactFlush = 4 << 20

// catchUpLocked is how many appended bytes Compact may leave for the last
// catch-up, which runs with writes stopped.
const catchUpLocked = 1 << 20

func (b *compactBuilder) create(datPath, idxPath string, sb Superblock) error {
	var err error
	if b.dat, err = b.fs.Create(datPath); err != nil {
		return err
	}
	if b.idx, err = b.fs.Create(idxPath); err != nil {
		return err
	}
	b.pending = append(b.pending, sb.encode()...)
	b.recs = append(b.recs, encodeIdxHeader(sb.Vid, sb.Generation)...)
	b.tail = SuperblockSize
	return nil
}

// add indexes a needle placed at the builder's tail.
func (b *compactBuilder) add(e idxEntry) {
	b.ix.apply(e)
	b.recs = appendIdxRecord(b.recs, e)
	b.tail += int64(e.length) * needle.Alignment
}

// appendRaw appends a needle's bytes as they are (raw is the whole padded
// needle n was decoded from), except that its header magic is set to say
// whether it starts its batch in the new file (start): a batch whose first
// needles were deleted starts at its first live one. The magic is outside
// the checksum, so the checksum does not change.
func (b *compactBuilder) appendRaw(raw []byte, n *needle.Needle, start bool) error {
	b.add(idxEntry{key: n.Key, size: uint32(n.Size), off: uint32(b.tail / needle.Alignment), length: uint32(len(raw) / needle.Alignment)})
	at := len(b.pending)
	b.pending = append(b.pending, raw...)
	b.format.SetBatchStart(b.pending[at:], start)
	if len(b.pending) >= compactFlush {
		return b.flush()
	}
	return nil
}

func (b *compactBuilder) appendNeedle(n *needle.Needle) error {
	var err error
	if b.enc, err = b.format.Append(b.enc[:0], n); err != nil {
		return err
	}
	b.add(idxEntry{key: n.Key, size: uint32(n.Size), off: uint32(b.tail / needle.Alignment), length: uint32(len(b.enc) / needle.Alignment)})
	b.pending = append(b.pending, b.enc...)
	if len(b.pending) >= compactFlush {
		return b.flush()
	}
	return nil
}

// catchUp copies the whole needles in old[from, to) verbatim and returns
// where it stopped. Everything there was acknowledged, so it must decode.
func (b *compactBuilder) catchUp(old vfs.File, from, to int64) (int64, error) {
	s := NewScanner(old, b.format, from, to)
	for {
		n, err := s.Next()
		if errors.Is(err, io.EOF) {
			return s.Pos(), nil
		}
		if err != nil {
			return s.Pos(), fmt.Errorf("at %d: %w", s.Pos(), err)
		}
		raw, err := s.window(s.Offset(), s.Len())
		if err != nil {
			return s.Pos(), err
		}
		b.add(idxEntry{key: n.Key, size: uint32(n.Size), off: uint32(b.tail / needle.Alignment), length: uint32(s.Len() / needle.Alignment), tombstone: n.IsTombstone()})
		b.pending = append(b.pending, raw...)
		if len(b.pending) >= compactFlush {
			if err := b.flush(); err != nil {
				return s.Pos(), err
			}
		}
	}
}

// flush writes buffered needle bytes and idx records.
func (b *compactBuilder) flush() error {
	if len(b.pending) > 0 {
		off := b.tail - int64(len(b.pending))
		if _, err := b.dat.WriteAt(b.pending, off); err != nil {
			return err
		}
		b.pending = b.pending[:0]
	}
	if len(b.recs) > 0 {
		if _, err := b.idx.WriteAt(b.recs, b.idxBytes); err != nil {
			return err
		}
		b.idxBytes += int64(len(b.recs))
		b.recs = b.recs[:0]
	}
	return nil
}

func (b *compactBuilder) finish() error {
	if err := b.flush(); err != nil {
		return err
	}
	if err := b.dat.Sync(); err != nil {
		return err
	}
	return b.idx.Sync()
}

// abort closes and removes the new files unless they were swapped in.
func (b *compactBuilder) abort(datPath, idxPath string) {
	if b.dat != nil {
		b.dat.Close()
		b.fs.Remove(datPath)
	}
	if b.idx != nil {
		b.idx.Close()
		b.fs.Remove(idxPath)
	}
}
