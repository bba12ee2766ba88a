package volume

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/haybale/haybale/needle"
)

// Check verifies that the in-RAM index and the volume agree: every live
// entry lies inside the durable part of the file, no two entries overlap,
// and each reads back as an intact needle with the key and size code the
// index promises. It reports every problem found, joined, and is meant for
// tests and operator tools (it reads every live needle).
func (v *Volume) Check() error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.mu.closed {
		return ErrClosed
	}
	type span struct{ start, end int64 }
	var spans []span
	var errs []error
	tail := v.tail.Load()
	var buf []byte
	v.mu.index.ascend(func(key uint64, size, off, length uint32) bool {
		start, end := int64(off)*8, (int64(off)+int64(length))*8
		if start < SuperblockSize || end > tail {
			errs = append(errs, fmt.Errorf("key %x size %d: [%d, %d) outside [%d, %d)", key, size, start, end, SuperblockSize, tail))
			return len(errs) < 100
		}
		spans = append(spans, span{start, end})
		var n needle.Needle
		var err error
		n, buf, err = v.readAtLocked(off, length, buf)
		if err == nil {
			_, err = verifyRead(n, key, needle.SizeCode(size))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("key %x size %d at %d: %w", key, size, start, err))
		}
		return len(errs) < 100
	})
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].end {
			errs = append(errs, fmt.Errorf("entries overlap: [%d, %d) and [%d, %d)",
				spans[i-1].start, spans[i-1].end, spans[i].start, spans[i].end))
		}
	}
	return errors.Join(errs...)
}
