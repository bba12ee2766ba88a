package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// ErrGenerationChanged is returned by CopyTo when the volume was compacted
// since the bytes a resumed copy started from.
var ErrGenerationChanged = errors.New("volume: volume was compacted; copy again from the start")

// copyChunk is the size of the pieces CopyTo hands out.
const copyChunk = 1 << 20

// CopyTo reads the .dat from offset up to its durable end at the time of
// the call and hands it to fn in chunks of at most 1 MiB, with the total
// size and the compaction generation being copied. A resumed copy
// (offset > 0) passes the generation of what it has; if the volume was
// compacted since (before or during the copy), CopyTo returns
// ErrGenerationChanged. The bytes are a consistent prefix: every needle in
// it was durable when the copy started.
func (v *Volume) CopyTo(ctx context.Context, offset int64, generation uint32, fn func(chunk []byte, off, total int64, gen uint32) error) error {
	v.mu.RLock()
	gen := v.super.Generation
	closed := v.mu.closed
	v.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if offset > 0 && generation != gen {
		return fmt.Errorf("%w (have generation %d, volume is at %d)", ErrGenerationChanged, generation, gen)
	}
	total := v.tail.Load()
	if offset < 0 || offset > total {
		return fmt.Errorf("%w: offset %d outside [0, %d]", ErrInvalid, offset, total)
	}
	buf := make([]byte, copyChunk)
	for off := offset; off < total; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(int64(len(buf)), total-off))
		v.mu.RLock()
		if v.mu.closed {
			v.mu.RUnlock()
			return ErrClosed
		}
		if v.super.Generation != gen {
			v.mu.RUnlock()
			return fmt.Errorf("%w (compacted during the copy)", ErrGenerationChanged)
		}
		got, err := v.dat.ReadAt(buf[:n], off)
		v.mu.RUnlock()
		if got < n {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("volume %d: read at %d: %w", v.vid, off, err)
		}
		if err := fn(buf[:n], off, total, gen); err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}
