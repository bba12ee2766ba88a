package directory

import (
	"context"

	"fmt"
	"math"
	"sync"
)

// sequencer hands out photo keys in increasing order. It reserves them in
// blocks: before the first key of a block is handed out, the block's end is
// committed through the Log (CmdReserveKeys) as the new high-water mark, so
// after a restart, a crash or a change of leader the sequencer starts above
// every key any node ever handed out (the rest of each node's last block
// is skipped). Each leadership of this node (its Log epoch) starts from the
// FSM's mark, which then covers every block committed before. It is safe
// for concurrent use.
type sequencer struct {
	fsm   *FSM
	log   Log
	block uint64

	mu struct {
		sync.Mutex
		epoch uint64 // leadership the range below belongs to
		next  uint64 // next key to hand out
		limit uint64 // last key covered by the committed high-water mark
	}
}

func newSequencer(fsm *FSM, log Log, block uint64) *sequencer {
	return &sequencer{fsm: fsm, log: log, block: max(block, 1)}
}

// next reserves count keys and returns the first; the keys are first ..
// first+count-1. It fails with a NotLeaderError when this node does not
// lead.
func (q *sequencer) next(ctx context.Context, count uint64) (uint64, error) {
	if count == 0 {
		return 0, fmt.Errorf("%w: zero keys asked for", ErrInvalidArgument)
	}
	epoch, _ := q.log.Leadership()
	if epoch == 0 {
		return 0, q.log.NotLeader()
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.mu.epoch != epoch {
		// A new leadership: the FSM holds every block committed so far
		// (the Log applied all of them before reporting the epoch).
		hw := q.fsm.HighWater()
		q.mu.epoch, q.mu.next, q.mu.limit = epoch, hw+1, hw
		if hw == math.MaxUint64 {
			q.mu.next = 0
		}
	}
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
		if err := q.log.Apply(ctx, Command{Type: CmdReserveKeys, HighWater: hw}); err != nil {
			// The block may or may not be committed: never use it, and
			// start the next attempt from the FSM's mark.
			q.mu.epoch = 0
			return 0, fmt.Errorf("reserve keys: %w", err)
		}
		q.mu.limit = hw
	}
	q.mu.next = last + 1 // wraps to 0 after the last key, which ends the sequence
	return first, nil
}
