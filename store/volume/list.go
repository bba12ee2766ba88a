package volume

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/cespare/xxhash/v2"

	"github.com/haybale/haybale/needle"
)

// ListEntry is one needle of a listing: a live image or a tombstone.
type ListEntry struct {
	Key       uint64
	Size      needle.SizeCode // needle.SizeAll for a whole-photo tombstone
	Tombstone bool
	Offset    int64 // bytes
	Length    int   // bytes, padded
	// The fields below are read from the needle; they are zero when
	// Damaged is set.
	Cookie      uint64
	ContentType needle.ContentType
	AppendTime  int64
	Checksum    uint64 // stored checksum (the ETag); covers the batch flags
	ContentHash uint64 // see ContentHash
	// Damaged is the verification error of a needle whose bytes are
	// damaged.
	Damaged error
}

// ContentHash returns the xxhash64 of what a needle holds, whatever batch
// it was written in: cookie, key, size code, content type, append time (all
// little-endian, in that order) and data. Two replicas of one image have
// the same content hash even when their batch flags, and so their stored
// checksums, differ.
func ContentHash(n *needle.Needle) uint64 {
	var h [29]byte
	binary.LittleEndian.PutUint64(h[0:], n.Cookie)
	binary.LittleEndian.PutUint64(h[8:], n.Key)
	binary.LittleEndian.PutUint32(h[16:], uint32(n.Size))
	h[20] = uint8(n.ContentType)
	binary.LittleEndian.PutUint64(h[21:], uint64(n.AppendTime))
	d := xxhash.New()
	d.Write(h[:])
	d.Write(n.Data)
	return d.Sum64()
}

// List calls fn with the number of entries and then for every live needle
// and every tombstone of the volume, in (key, size) order (a whole-photo
// tombstone after the sizes of its key). Live needles are read and
// verified unless tombstonesOnly is set, in which case only tombstones are
// listed. The entries are those of the moment List starts; needles written
// meanwhile are not listed. fn must not call back into the volume.
func (v *Volume) List(ctx context.Context, tombstonesOnly bool, fn func(e ListEntry, total int) error) error {
	var locs []ListEntry
	v.mu.RLock()
	if v.mu.closed {
		v.mu.RUnlock()
		return ErrClosed
	}
	if !tombstonesOnly {
		v.mu.index.ascend(func(key uint64, size, off, length uint32) bool {
			locs = append(locs, ListEntry{Key: key, Size: needle.SizeCode(size), Offset: int64(off) * needle.Alignment, Length: int(length) * needle.Alignment})
			return true
		})
	}
	v.mu.index.eachTombstone(func(e excEntry) bool {
		locs = append(locs, ListEntry{Key: e.key, Size: needle.SizeCode(e.size), Tombstone: true, Offset: int64(e.off) * needle.Alignment, Length: int(e.length) * needle.Alignment})
		return true
	})
	v.mu.RUnlock()
	slices.SortStableFunc(locs, func(a, b ListEntry) int {
		return cmp.Or(cmp.Compare(a.Key, b.Key), cmp.Compare(a.Size, b.Size))
	})
	var buf []byte
	for i := range locs {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		e := &locs[i]
		v.mu.RLock()
		if v.mu.closed {
			v.mu.RUnlock()
			return ErrClosed
		}
		var n needle.Needle
		var err error
		n, buf, err = v.readAtLocked(uint32(e.Offset/needle.Alignment), uint32(e.Length/needle.Alignment), buf)
		v.mu.RUnlock()
		if err == nil && (n.Key != e.Key || n.Size != e.Size || n.IsTombstone() != e.Tombstone) {
			err = fmt.Errorf("%w: want key %x size %v tombstone %v, found key %x size %v tombstone %v",
				needle.ErrMismatch, e.Key, e.Size, e.Tombstone, n.Key, n.Size, n.IsTombstone())
		}
		switch {
		case err == nil:
			e.Cookie, e.ContentType, e.AppendTime, e.Checksum = n.Cookie, n.ContentType, n.AppendTime, n.Checksum
			e.ContentHash = ContentHash(&n)
		case IsCorruption(err):
			e.Damaged = err
		default:
			return fmt.Errorf("volume %d: read key %x size %v: %w", v.vid, e.Key, e.Size, err)
		}
		if err := fn(*e, len(locs)); err != nil {
			return err
		}
	}
	return nil
}
