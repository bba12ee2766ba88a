package volume

import (
	"errors"
	"fmt"
	"sync"

	"github.com/haybale/haybale/internal/vfs"
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

// commitQueue implements group commit as a two-stage pipeline. Writers
// queue batches and wait. The committer goroutine takes everything queued
// as one round, places it at the end of the bytes written so far and
// pwrites it, then hands the round to the syncer goroutine, which
// fdatasyncs, publishes the round's needles to the index, appends their idx
// records and wakes exactly the writers of that round. While the syncer
// waits for the disk, the committer already writes the next round (which
// holds everything that arrived meanwhile): the disk does not wait for the
// copy into the page cache and the copy does not wait for the disk.
//
// The pipeline is one round deep: the hand-over blocks until the syncer
// has answered the round before, so at most one round is being written
// while at most one other is being synced. Rounds reach the syncer in file
// order and are answered in that order, each after an fdatasync that began
// once its bytes were written. Only the committer (or whoever holds round)
// writes the file tail; only the syncer, or whoever holds round once lead
// has drained the pipeline, touches the idx file and its state.
type commitQueue struct {
	// round is held by the committer while it places and writes a round,
	// and by lead to stop appends (compaction's last catch-up and swap,
	// Sync, EC encode, Close).
	round sync.Mutex
	// Guarded by round:
	next      int64      // where the next round starts; 0: at the durable tail
	lastTombs []idxEntry // tombstones of the last round handed over, maybe not yet indexed
	// inflight counts the rounds handed to the syncer and not yet
	// answered. Add is called under round, and so is Wait (by lead).
	inflight sync.WaitGroup

	mu      sync.Mutex
	queue   []*pending
	closing bool

	kick    chan struct{} // wakes the committer; capacity 1
	stopped chan struct{} // closed when the committer and the syncer have exited
}

// round is one group of batches on its way through the pipeline.
type round struct {
	group    []*pending // every batch taken from the queue, in queue order
	accepted []*pending // the batches placed in the file, in file order
	dat      vfs.File   // the file they were written to
	end      int64      // end of the round's bytes
	written  bool       // every pwrite of the round succeeded
}

// startCommitter starts the volume's committer and syncer goroutines;
// Close stops them.
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

// committer places and writes rounds until the volume closes; it exits
// once closing is set and the queue is empty, after the syncer has answered
// every round, so every queued batch gets an answer.
func (v *Volume) committer() {
	q := &v.commit
	rounds := make(chan *round) // unbuffered: the pipeline is one round deep
	synced := make(chan struct{})
	go v.syncer(rounds, synced)
	defer func() {
		close(rounds)
		<-synced
		close(q.stopped)
	}()
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
			r := v.writeRound(group)
			q.inflight.Add(1)
			q.round.Unlock()
			rounds <- r
		}
	}
}

// syncer makes the rounds it is handed durable, publishes them and answers
// their writers, in order. After an fdatasync fails, no later round is
// trusted: the kernel may have dropped dirty pages they depend on.
func (v *Volume) syncer(rounds <-chan *round, synced chan<- struct{}) {
	defer close(synced)
	var broken error
	for r := range rounds {
		v.syncRound(r, &broken)
		for _, p := range r.group {
			close(p.done)
		}
		v.commit.inflight.Done()
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
// rounds of the committer and waits until the syncer has answered every
// round written, so the holder sees no byte in flight: v.tail is the end
// of the file's needles, and the .dat, the idx and their state are its own.
func (v *Volume) lead() error {
	q := &v.commit
	q.round.Lock()
	q.inflight.Wait()
	// The holder may move the tail (compaction): the next round starts at
	// whatever durable tail it leaves, and every tombstone is indexed.
	q.next, q.lastTombs = 0, nil
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

// writeRound places one round of batches after the bytes written so far and
// writes them. It runs only in the committer, under the round lock, while
// the syncer may be syncing the round before.
func (v *Volume) writeRound(group []*pending) *round {
	q := &v.commit
	start := q.next
	if start == 0 {
		start = v.tail.Load()
	}
	r := &round{group: group, dat: v.dat, end: start}
	// Tombstones of the round the syncer may still be syncing are not in
	// the index yet: check writes against them too.
	roundTombs := append([]idxEntry(nil), q.lastTombs...)
	ownTombs := len(roundTombs)
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
		case r.end+int64(len(p.buf)) > v.opts.SizeLimit && !p.tombstoneOnly():
			v.setState(StateReadOnly, "full")
			p.err = fmt.Errorf("%w: %d bytes do not fit under the %d-byte limit", ErrFull, len(p.buf), v.opts.SizeLimit)
		case r.end+int64(len(p.buf)) > MaxSize:
			p.err = fmt.Errorf("%w: volume at its %d-byte format limit", ErrFull, MaxSize)
		default:
			p.base = r.end
			r.end += int64(len(p.buf))
			r.accepted = append(r.accepted, p)
			for _, op := range p.ops {
				if op.tombstone {
					roundTombs = append(roundTombs, op)
				}
			}
		}
	}
	q.lastTombs = nil
	if len(r.accepted) == 0 {
		return r
	}
	for _, w := range coalesce(r.accepted, start, r.end) {
		n, err := r.dat.WriteAt(w.buf, w.off)
		if err == nil && n < len(w.buf) {
			err = errors.New("short write")
		}
		if err != nil {
			werr := fmt.Errorf("write at %d: %w", w.off, err)
			// Nothing of this round was acknowledged: cut it off so the
			// next round starts on a clean tail. The round before, which
			// may be syncing, ends at start and is not touched.
			if terr := r.dat.Truncate(start); terr != nil {
				v.fail(fmt.Errorf("%v; truncate back to %d: %w", werr, start, terr))
			}
			for _, p := range r.accepted {
				p.err = werr
			}
			q.next = start
			return r
		}
	}
	r.written = true
	q.next = r.end
	q.lastTombs = roundTombs[ownTombs:]
	return r
}

// syncRound makes a written round durable, then publishes it to the index
// and appends its idx hints. It runs only in the syncer. broken holds the
// error of the first failed fdatasync: the round after it fails too.
func (v *Volume) syncRound(r *round, broken *error) {
	if !r.written {
		return // nothing accepted, or the pwrite failed: errors are set
	}
	if *broken != nil {
		for _, p := range r.accepted {
			p.err = fmt.Errorf("written after a failed %w", *broken)
		}
		return
	}
	if err := r.dat.Sync(); err != nil {
		serr := fmt.Errorf("fdatasync: %w", err)
		v.fail(serr)
		*broken = serr
		for _, p := range r.accepted {
			p.err = serr
		}
		return
	}
	v.tail.Store(r.end)
	v.syncs.Add(1)

	// Durable: publish to the index, then append the idx hints.
	var recs []byte
	v.mu.Lock()
	for _, p := range r.accepted {
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
	if r.end >= v.opts.SizeLimit {
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
