package directory

import (
	"errors"
	"fmt"
	"math"
	"sync"
)

// ErrKeysExhausted is returned when the 64-bit key space is used up.
var ErrKeysExhausted = errors.New("directory: key space exhausted")

// sequencer hands out photo keys in increasing order. It reserves them in
// blocks: before the first key of a block is handed out, the block's end is
// applied to the FSM as the new high-water mark, so after a restart or a
// crash the sequencer starts above every key it ever handed out (the rest
// of the last block is skipped). It is safe for concurrent use.
type sequencer struct {
	fsm   *FSM
	block uint64

	mu struct {
		sync.Mutex
		next  uint64 // next key to hand out
		limit uint64 // last key covered by the persisted high-water mark
	}
}

func newSequencer(fsm *FSM, block uint64) *sequencer {
	q := &sequencer{fsm: fsm, block: max(block, 1)}
	hw := fsm.HighWater()
	q.mu.next, q.mu.limit = hw+1, hw
	return q
}

// next reserves count keys and returns the first; the keys are first ..
// first+count-1.
func (q *sequencer) next(count uint64) (uint64, error) {
	if count == 0 {
		return 0, errors.New("directory: zero keys asked for")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	first := q.mu.next
	if first == 0 || first-1 > math.MaxUint64-count {
		return 0, ErrKeysExhausted
	}
	last := first + count - 1
	if last > q.mu.limit {
		hw := last
		if first-1 <= math.MaxUint64-max(count, q.block) {
			hw = first - 1 + max(count, q.block)
		}
		if err := q.fsm.Apply(Command{Type: CmdReserveKeys, HighWater: hw}); err != nil {
			return 0, fmt.Errorf("directory: reserve keys: %w", err)
		}
		q.mu.limit = hw
	}
	q.mu.next = last + 1 // wraps to 0 after the last key, which ends the sequence
	return first, nil
}
