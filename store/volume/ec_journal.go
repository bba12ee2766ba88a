package volume

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"

	"github.com/cespare/xxhash/v2"

	"github.com/haybale/haybale/internal/vfs"
	"github.com/haybale/haybale/needle"
)

// Deletion journals that converge.
//
// Every holder of an EC volume keeps the whole journal, and a delete is
// sent to every holder; one that was down or unreachable misses it. The
// holders therefore sync: each reads the other holders' journals and
// appends the deletes it lacks (MergeJournal). Deletes are never undone, so
// the journal is a set that only grows, and every holder converges to the
// union of all the journals. Two journals hold the same set when their
// JournalDigest agree: the count of distinct records and the sum, modulo
// 2^64, of the xxHash64 of each record's first 20 bytes (key, cookie, size
// code), which does not depend on the order the records were appended in.

// ErrJournalPending is returned (wrapped) by ECVolume.Read while the volume
// waits for the first sync of its journal with the other holders (see
// ECVolume.HoldUntilSynced). It also matches ErrUnrecoverable, so the
// store answers 503 volume-unavailable and readers fail over to another
// holder.
var ErrJournalPending = errors.New("volume: EC volume not served until its deletion journal is synced with the other holders")

// journalPendingError is the error of a read while the journal waits for
// its first sync.
type journalPendingError struct{ vid uint32 }

func (e journalPendingError) Error() string {
	return fmt.Sprintf("EC volume %d: %v", e.vid, ErrJournalPending)
}

func (journalPendingError) Is(target error) bool {
	return target == ErrJournalPending || target == ErrUnrecoverable
}

// ECDelete is one journaled delete of an EC volume.
type ECDelete struct {
	Key    uint64
	Cookie uint64
	// Size is the size code deleted, needle.SizeAll for every size.
	Size needle.SizeCode
}

func (d ECDelete) record() ecjRecord {
	return ecjRecord{key: d.Key, cookie: d.Cookie, size: uint32(d.Size)}
}

// JournalDigest identifies the set of deletes of a journal.
type JournalDigest struct {
	// Count is the number of distinct deletes.
	Count int64 `json:"count"`
	// Sum is the sum, modulo 2^64, of the xxHash64 of each delete's
	// record bytes [0, 20).
	Sum uint64 `json:"sum"`
}

// recordHash is the digest term of one record.
func recordHash(r ecjRecord) uint64 {
	var b [20]byte
	binary.LittleEndian.PutUint64(b[0:], r.key)
	binary.LittleEndian.PutUint64(b[8:], r.cookie)
	binary.LittleEndian.PutUint32(b[16:], r.size)
	return xxhash.Sum64(b[:])
}

// journalSet is the set of records of a journal and its digest. It is
// guarded by the volume's jmu.
type journalSet struct {
	recs   map[ecjRecord]struct{}
	digest JournalDigest
}

// add puts r in the set and reports whether it was new.
func (s *journalSet) add(r ecjRecord) bool {
	if s.recs == nil {
		s.recs = map[ecjRecord]struct{}{}
	}
	if _, ok := s.recs[r]; ok {
		return false
	}
	s.recs[r] = struct{}{}
	s.digest.Count++
	s.digest.Sum += recordHash(r)
	return true
}

// ParseECJournal returns the deletes of a whole journal file of EC volume
// vid (as EcShardCopy of "ecj" streams it), checking its header. A torn
// last record is left out; a damaged record followed by intact ones is
// skipped and counted in damaged (the intact ones are real deletes).
func ParseECJournal(b []byte, vid uint32) (dels []ECDelete, generation uint32, damaged int, err error) {
	jv, jg, err := decodeECJHeader(b)
	if err != nil {
		return nil, 0, 0, err
	}
	if jv != vid {
		return nil, 0, 0, fmt.Errorf("%w: journal of volume %d, want %d", ErrNotEC, jv, vid)
	}
	recs, _, damaged := parseJournalRecords(b[ecjRecordSize:])
	dels = make([]ECDelete, len(recs))
	for i, r := range recs {
		dels[i] = ECDelete{Key: r.key, Cookie: r.cookie, Size: needle.SizeCode(r.size)}
	}
	return dels, jg, damaged, nil
}

// parseJournalRecords decodes the records that follow a journal header.
// It returns the intact records, the length of the prefix up to the end
// of the last intact record, and how many damaged records lie before it.
// Bytes after the last intact record are a torn append, never
// acknowledged.
func parseJournalRecords(b []byte) (recs []ecjRecord, end int64, damaged int) {
	bad := 0
	for off := 0; off+ecjRecordSize <= len(b); off += ecjRecordSize {
		r, ok := decodeECJRecord(b[off : off+ecjRecordSize])
		if !ok {
			bad++
			continue
		}
		recs = append(recs, r)
		end = int64(off + ecjRecordSize)
		damaged += bad
		bad = 0
	}
	return recs, end, damaged
}

// JournalDigest returns the digest of the volume's journal.
func (e *ECVolume) JournalDigest() JournalDigest {
	return JournalDigest{Count: e.deletes.Load(), Sum: e.digestSum.Load()}
}

// publishDigest copies journal.digest to the atomics; jmu is held.
func (e *ECVolume) publishDigest() {
	e.deletes.Store(e.journal.digest.Count)
	e.digestSum.Store(e.journal.digest.Sum)
}

// HasDelete reports whether the journal holds d.
func (e *ECVolume) HasDelete(d ECDelete) bool {
	e.jmu.Lock()
	defer e.jmu.Unlock()
	_, ok := e.journal.recs[d.record()]
	return ok
}

// HoldUntilSynced makes reads fail with ErrJournalPending until
// JournalSynced is called: a store that may have missed deletes while it
// was down (or that mounts shards copied from one holder) serves the
// volume only once its journal holds what the other holders journaled.
// Deletes and shard reads go on meanwhile.
func (e *ECVolume) HoldUntilSynced() { e.pending.Store(true) }

// JournalSynced lifts HoldUntilSynced: a sync with every reachable holder
// has run.
func (e *ECVolume) JournalSynced() { e.pending.Store(false) }

// SyncPending reports whether reads wait for a journal sync.
func (e *ECVolume) SyncPending() bool { return e.pending.Load() }

// MergeJournal appends to the journal the deletes of dels it does not hold
// yet, in one write and one sync, then applies them to the in-RAM index,
// and returns how many it added. A delete merged this way was checked by
// the holder that journaled it: it is applied without reading the needle,
// as it is when the journal is loaded. On a write or sync error nothing is
// applied and the journal is cut back to its former size.
func (e *ECVolume) MergeJournal(ctx context.Context, dels []ECDelete) (int, error) {
	e.jmu.Lock()
	defer e.jmu.Unlock()
	if e.retired {
		return 0, fmt.Errorf("%w: EC volume %d was decoded into a plain volume", ErrClosed, e.vid)
	}
	e.mu.RLock()
	closed := e.mu.closed
	e.mu.RUnlock()
	if closed {
		return 0, ErrClosed
	}
	var buf []byte
	var add []ecjRecord
	seen := map[ecjRecord]bool{}
	for _, d := range dels {
		r := d.record()
		if !d.Size.Valid() && d.Size != needle.SizeAll {
			return 0, fmt.Errorf("%w: journaled delete of key %x has size code %d", ErrInvalid, d.Key, d.Size)
		}
		if _, ok := e.journal.recs[r]; ok || seen[r] {
			continue
		}
		seen[r] = true
		add = append(add, r)
		buf = appendECJRecord(buf, r)
	}
	if len(add) == 0 {
		return 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if _, err := e.ecj.WriteAt(buf, e.ecjSize); err != nil {
		e.ecj.Truncate(e.ecjSize)
		return 0, fmt.Errorf("EC volume %d: merge journal: %w", e.vid, err)
	}
	if err := e.ecj.Sync(); err != nil {
		e.ecj.Truncate(e.ecjSize)
		return 0, fmt.Errorf("EC volume %d: merge journal: %w", e.vid, err)
	}
	e.ecjSize += int64(len(buf))
	e.mu.Lock()
	for _, r := range add {
		e.journal.add(r)
		e.mu.index.removeLive(r.key, r.size)
	}
	e.mu.Unlock()
	e.publishDigest()
	return len(add), nil
}

// JournalDeletes returns the deletes of the journal, in the order they
// were appended.
func (e *ECVolume) JournalDeletes() ([]ECDelete, error) {
	e.jmu.Lock()
	defer e.jmu.Unlock()
	b := make([]byte, e.ecjSize)
	if err := readFull(e.ecj, b, 0); err != nil {
		return nil, fmt.Errorf("EC volume %d: read journal: %w", e.vid, err)
	}
	dels, _, _, err := ParseECJournal(b, e.vid)
	return dels, err
}

// RepairECJournal rewrites the journal of EC volume vid in dir when it
// cannot be loaded (its header is damaged, or names another volume or
// generation): a fresh header for the ecx's volume and generation, then
// every intact record of the old file (they are real deletes, and a delete
// is never undone), written atomically. The records lost with the damage
// come back from the other holders' journals. It returns how many records
// it kept; a journal that loads is left alone (0, nil).
func RepairECJournal(ctx context.Context, fs vfs.FS, dir string, vid uint32) (int, error) {
	if fs == nil {
		fs = vfs.Default
	}
	g, _, err := loadECX(ctx, fs, dir, vid)
	if err != nil {
		return 0, err
	}
	path := ECJournalPath(dir, vid)
	if _, _, _, err := readJournal(fs, path, vid, g.generation); err == nil || errors.Is(err, iofs.ErrNotExist) {
		return 0, nil
	}
	f, err := fs.Open(path)
	if err != nil {
		return 0, err
	}
	size, err := f.Size()
	if err == nil && size < ecjRecordSize {
		size = ecjRecordSize
	}
	b := make([]byte, size)
	if err == nil {
		_, err = f.ReadAt(b, 0)
		if errors.Is(err, io.EOF) {
			err = nil
		}
	}
	f.Close()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	recs, _, _ := parseJournalRecords(b[ecjRecordSize:])
	out := encodeECJHeader(vid, g.generation)
	for _, r := range recs {
		out = appendECJRecord(out, r)
	}
	if err := vfs.WriteFileAtomic(fs, path, out); err != nil {
		return 0, fmt.Errorf("%s: rewrite: %w", path, err)
	}
	return len(recs), nil
}
