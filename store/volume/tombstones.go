package volume

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/haybale/haybale/needle"
)

// Tombstones are permanent (see the package doc).
//
// A tombstone for (key, size) removes that image whether its needle was
// appended before the tombstone or after it, and the removal holds across
// restarts (the idx and the scan replay it), compaction (which copies every
// tombstone, verbatim, into the new file) and replica sync (which carries
// the tombstones of both sides over). Keys are handed out once by the
// directory's sequencer and never reused, so a tombstone can only ever be
// meant for the photo that had its key. This is what lets a writer that
// abandons a photo tombstone it on a replica that has not seen the write
// yet: the write, if it lands later, is refused, and if its bytes are
// already queued they stay dead.
//
// The index keeps each tombstone's place (a 14-byte record per deleted photo,
// see tombSet), so compaction and replica checks can read it back.

// ErrDeleted is returned by Write for a (key, size) that a tombstone in the
// volume has deleted: deleted images are never written again.
var ErrDeleted = errors.New("volume: image was deleted")

// MaxAppendTimeAhead is how far ahead of the store's clock an append time
// chosen by a writer may be. Writers choose one append time for all the
// replicas of a write; a larger skew means a broken clock or a bad request.
const MaxAppendTimeAhead = time.Hour

// apply records one indexed needle: a tombstone removes the live entries it
// names and is remembered; a data needle becomes the live entry for its
// (key, size) unless a tombstone covers it. It returns the 8-byte units the
// tombstone freed.
func (ix *index) apply(e idxEntry) uint64 {
	if e.tombstone {
		ix.tombs.put(excEntry{key: e.key, size: e.size, off: e.off, length: e.length})
		return ix.removeLive(e.key, e.size)
	}
	if ix.deleted(e.key, e.size) {
		return 0
	}
	ix.put(e.key, e.size, e.off, e.length)
	return 0
}

// deleted reports whether a tombstone covers (key, size): one for that size
// or one for every size of key.
func (ix *index) deleted(key uint64, size uint32) bool {
	if ix.tombs.len() == 0 {
		return false
	}
	return ix.tombs.has(key, size) || ix.tombs.has(key, allSizes)
}

// eachTombstone calls fn for every tombstone in (key, size) order until fn
// returns false.
func (ix *index) eachTombstone(fn func(e excEntry) bool) {
	ix.tombs.ascend(fn)
}

// Deleted reports whether a tombstone in the volume covers (key, size);
// size needle.SizeAll asks about a tombstone for the whole photo.
func (v *Volume) Deleted(key uint64, size needle.SizeCode) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.mu.index.deleted(key, uint32(size))
}

// Tombstones returns every tombstone of the volume, decoded, in (key, size)
// order. A tombstone whose bytes are damaged is returned with its key and
// size code (which the index knows) and a zero cookie and append time, so a
// caller that carries tombstones elsewhere never drops a delete.
func (v *Volume) Tombstones(ctx context.Context) ([]needle.Needle, error) {
	var out []needle.Needle
	err := v.List(ctx, true, func(e ListEntry, _ int) error {
		out = append(out, needle.Needle{Key: e.Key, Size: e.Size, Flags: needle.FlagTombstone, Cookie: e.Cookie, AppendTime: e.AppendTime, Checksum: e.Checksum})
		return nil
	})
	return out, err
}

// ApplyTombstones appends the given tombstones that the volume does not
// have yet, each as its own needle with the cookie and append time it
// carries (a zero append time becomes now), so the result is byte-identical
// to the replica the tombstones come from. Read-only and sealed volumes take
// them as they take any delete. It returns how many it appended.
func (v *Volume) ApplyTombstones(ctx context.Context, ts []needle.Needle) (int, error) {
	var ps []*pending
	seen := map[[2]uint64]bool{}
	for i := range ts {
		t := ts[i]
		if t.Key == 0 || (!t.Size.Valid() && t.Size != needle.SizeAll) {
			return 0, fmt.Errorf("%w: tombstone for key %x size %d", ErrInvalid, t.Key, t.Size)
		}
		if v.Deleted(t.Key, t.Size) || seen[[2]uint64{t.Key, uint64(t.Size)}] {
			continue
		}
		seen[[2]uint64{t.Key, uint64(t.Size)}] = true
		p, err := v.tombstone(t.Key, t.Cookie, t.Size, t.AppendTime)
		if err != nil {
			return 0, err
		}
		ps = append(ps, p)
	}
	if len(ps) == 0 {
		return 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := v.submitAll(ps); err != nil {
		return 0, fmt.Errorf("volume %d: %w", v.vid, err)
	}
	return len(ps), nil
}

// tombstone encodes the tombstone for (key, size) as a batch of its own.
func (v *Volume) tombstone(key, cookie uint64, size needle.SizeCode, appendTime int64) (*pending, error) {
	now := v.opts.Now()
	if appendTime == 0 {
		appendTime = now.UnixNano()
	} else if err := checkAppendTime(appendTime, now); err != nil {
		return nil, err
	}
	t := &needle.Needle{Key: key, Cookie: cookie, Size: size, Flags: needle.FlagTombstone, AppendTime: appendTime, BatchStart: true}
	buf, err := v.format.Append(nil, t)
	if err != nil {
		return nil, fmt.Errorf("volume %d: %w", v.vid, err)
	}
	return &pending{buf: buf, ops: []idxEntry{{key: key, size: uint32(size), length: uint32(len(buf) / needle.Alignment), tombstone: true}}}, nil
}

// submitAll queues every batch before waiting for any, so they share group
// commits, and returns the first error.
func (v *Volume) submitAll(ps []*pending) error {
	q := &v.commit
	q.mu.Lock()
	if q.closing {
		q.mu.Unlock()
		return ErrClosed
	}
	for _, p := range ps {
		p.done = make(chan struct{})
		q.queue = append(q.queue, p)
	}
	q.mu.Unlock()
	q.wake()
	var first error
	for _, p := range ps {
		<-p.done
		if p.err != nil && first == nil {
			first = p.err
		}
	}
	return first
}

// checkAppendTime rejects append times a writer cannot mean: negative ones
// and ones more than MaxAppendTimeAhead ahead of the store's clock.
func checkAppendTime(t int64, now time.Time) error {
	if t < 0 || t > now.Add(MaxAppendTimeAhead).UnixNano() {
		return fmt.Errorf("%w: append time %s is negative or more than %v ahead of this store's clock (%s)",
			ErrInvalid, time.Unix(0, t).UTC().Format(time.RFC3339Nano), MaxAppendTimeAhead, now.UTC().Format(time.RFC3339Nano))
	}
	return nil
}
