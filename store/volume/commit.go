package volume

import (
	"errors"
	"fmt"
	"sync"

	"github.com/haybale/haybale/needle"
)

// pending is one queued batch: its encoded needles and the index changes
// they make, with offsets relative to the start of buf until the committer
// places the batch.
type pending struct {
	buf   []byte
	ops   []idxEntry
	base  int64  // where the committer placed buf
	freed uint64 // 8-byte units freed by tombstones
	err   error
	done  chan struct{} // closed when the batch is durable or failed
}

// tombstoneOnly reports whether the batch only deletes; deletes are
// accepted by read-only volumes so a photo can always be removed.
func (p *pending) tombstoneOnly() bool {
	for _, op := range p.ops {
		if !op.tombstone {
			return false
		}
	}
	return true
}

// commitQueue implements group commit. Writers queue batches and wait; one
// committer goroutine per volume takes everything queued, commits it as one
// round (pwrite, one fdatasync, index), wakes exactly the writers of that
// round, and takes the next round, which holds everything that arrived
// meanwhile. Only the committer (or whoever holds round) touches the file
// tail, the idx file and the idx state.
type commitQueue struct {
	// round is held by the committer for each round, and by lead to stop
	// appends (compaction's last catch-up and swap, Sync).
	round sync.Mutex

	mu      sync.Mutex
	queue   []*pending
	closing bool

	kick    chan struct{} // wakes the committer; capacity 1
	stopped chan struct{} // closed when the committer has exited
}

// startCommitter starts the volume's committer goroutine; Close stops it.
func (v *Volume) startCommitter() {
	v.commit.kick = make(chan struct{}, 1)
	v.commit.stopped = make(chan struct{})
	go v.committer()
}

func (q *commitQueue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// committer commits rounds until the volume closes; it exits once closing
// is set and the queue is empty, so every queued batch gets an answer.
func (v *Volume) committer() {
	q := &v.commit
	defer close(q.stopped)
	for range q.kick {
		for {
			q.mu.Lock()
			group, closing := q.queue, q.closing
			q.queue = nil
			q.mu.Unlock()
			if len(group) == 0 {
				if closing {
					return
				}
				break
			}
			q.round.Lock()
			v.commitGroup(group)
			q.round.Unlock()
			for _, p := range group {
				close(p.done)
			}
		}
	}
}

// stopCommitter makes the committer finish what is queued and exit.
func (v *Volume) stopCommitter() {
	q := &v.commit
	q.mu.Lock()
	q.closing = true
	q.mu.Unlock()
	q.wake()
	<-q.stopped
}

// submit queues p and waits until it is durable and indexed, or failed. It
// returns the byte offset where p's buffer starts.
func (v *Volume) submit(p *pending) (int64, error) {
	q := &v.commit
	p.done = make(chan struct{})
	q.mu.Lock()
	if q.closing {
		q.mu.Unlock()
		return 0, ErrClosed
	}
	q.queue = append(q.queue, p)
	q.mu.Unlock()
	q.wake()
	<-p.done
	return p.base, p.err
}

// lead stops appends until release: it takes the round lock between two
// rounds of the committer.
func (v *Volume) lead() error {
	q := &v.commit
	q.round.Lock()
	q.mu.Lock()
	closing := q.closing
	q.mu.Unlock()
	if closing {
		q.round.Unlock()
		return ErrClosed
	}
	return nil
}

// release lets appends go on after lead.
func (q *commitQueue) release() { q.round.Unlock() }

// commitGroup writes, syncs and indexes one round of batches. It runs only
// in the committer, under the round lock.
func (v *Volume) commitGroup(group []*pending) {
	start := v.tail.Load()
	end := start
	var accepted []*pending
	var roundTombs []idxEntry // tombstones accepted in this round so far
	for _, p := range group {
		state, reason := v.State()
		var deleted error
		if !p.tombstoneOnly() {
			deleted = v.deletedWrite(p, roundTombs)
		}
		switch {
		case v.retired.Load():
			p.err = fmt.Errorf("%w: the volume is now held as EC shards", ErrClosed)
		case deleted != nil:
			p.err = deleted
		case state == StateFailed:
			p.err = fmt.Errorf("%w: %s", ErrReadOnly, reason)
		case state != StateWritable && !p.tombstoneOnly():
			p.err = fmt.Errorf("%w: %s", ErrReadOnly, reason)
		case end+int64(len(p.buf)) > v.opts.SizeLimit && !p.tombstoneOnly():
			v.setState(StateReadOnly, "full")
			p.err = fmt.Errorf("%w: %d bytes do not fit under the %d-byte limit", ErrFull, len(p.buf), v.opts.SizeLimit)
		case end+int64(len(p.buf)) > MaxSize:
			p.err = fmt.Errorf("%w: volume at its %d-byte format limit", ErrFull, MaxSize)
		default:
			p.base = end
			end += int64(len(p.buf))
			accepted = append(accepted, p)
			for _, op := range p.ops {
				if op.tombstone {
					roundTombs = append(roundTombs, op)
				}
			}
		}
	}
	if len(accepted) == 0 {
		return
	}
	failAll := func(err error) {
		for _, p := range accepted {
			p.err = err
		}
	}
	for _, w := range coalesce(accepted, start, end) {
		n, err := v.dat.WriteAt(w.buf, w.off)
		if err == nil && n < len(w.buf) {
			err = errors.New("short write")
		}
		if err != nil {
			werr := fmt.Errorf("write at %d: %w", w.off, err)
			// Nothing of this round was acknowledged: cut it off so the
			// next round starts on a clean tail.
			if terr := v.dat.Truncate(start); terr != nil {
				v.fail(fmt.Errorf("%v; truncate back to %d: %w", werr, start, terr))
			}
			failAll(werr)
			return
		}
	}
	if err := v.dat.Sync(); err != nil {
		serr := fmt.Errorf("fdatasync: %w", err)
		v.fail(serr)
		failAll(serr)
		return
	}
	v.tail.Store(end)
	v.syncs.Add(1)

	// Durable: publish to the index, then append the idx hints.
	var recs []byte
	v.mu.Lock()
	for _, p := range accepted {
		for i := range p.ops {
			op := &p.ops[i]
			op.off += uint32(p.base / needle.Alignment)
			p.freed += v.mu.index.apply(*op)
			recs = appendIdxRecord(recs, *op)
		}
	}
	v.mu.Unlock()
	v.needles.Add(int64(len(recs) / idxRecordSize))
	v.appendIdx(recs)
	if end >= v.opts.SizeLimit {
		if s, _ := v.State(); s == StateWritable {
			v.setState(StateReadOnly, "full")
		}
	}
}

// coalesceLimit is the largest round whose batches are copied into one
// buffer and written with one pwrite; larger rounds write each batch with
// its own pwrite, where the copy would cost more than the system calls.
const coalesceLimit = 1 << 20

type fileWrite struct {
	off int64
	buf []byte
}

// coalesce returns the writes for one round of batches that occupy
// [start, end) back to back.
func coalesce(batches []*pending, start, end int64) []fileWrite {
	if len(batches) == 1 || end-start > coalesceLimit {
		ws := make([]fileWrite, len(batches))
		for i, p := range batches {
			ws[i] = fileWrite{p.base, p.buf}
		}
		return ws
	}
	buf := make([]byte, 0, end-start)
	for _, p := range batches {
		buf = append(buf, p.buf...)
	}
	return []fileWrite{{start, buf}}
}

// appendIdx appends idx records. The idx is a hint: when writing it fails,
// the volume stops writing it (so it has no holes) and the next open
// rebuilds the missing part from the .dat.
func (v *Volume) appendIdx(recs []byte) {
	if v.idx == nil || v.idxErr != nil || len(recs) == 0 {
		return
	}
	n, err := v.idx.WriteAt(recs, v.idxBytes)
	if err == nil && n < len(recs) {
		err = errors.New("short write")
	}
	if err != nil {
		v.idxErr = fmt.Errorf("idx write: %w", err)
		return
	}
	v.idxBytes += int64(n)
}

// deletedWrite returns ErrDeleted when a needle of p names a (key, size)
// that a tombstone deletes: one already indexed, or one accepted earlier in
// this round. Deleted images are never written again (see Tombstones).
func (v *Volume) deletedWrite(p *pending, roundTombs []idxEntry) error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.mu.index.tombs.len() == 0 && len(roundTombs) == 0 {
		return nil
	}
	for _, op := range p.ops {
		dead := v.mu.index.deleted(op.key, op.size)
		for _, t := range roundTombs {
			if t.key == op.key && (t.size == op.size || t.size == allSizes) {
				dead = true
			}
		}
		if dead {
			return fmt.Errorf("%w: key %x size %v", ErrDeleted, op.key, needle.SizeCode(op.size))
		}
	}
	return nil
}
