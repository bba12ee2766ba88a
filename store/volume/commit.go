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
// queue batches and wait. The committer goroutine places queued batches at
// the end of the bytes written so far and pwrites them into the open
// round; the syncer goroutine fdatasyncs a round, publishes its needles to
// the index, appends their idx records and wakes exactly the writers of
// that round. While the syncer waits for the disk, the committer writes
// the batches that arrive into the open round, and hands it over once the
// syncer is free: the disk does not wait for the copy into the page cache,
// the copy does not wait for the disk, and a round still holds everything
// that arrived while the round before was syncing.
//
// The pipeline is one round deep: at most one round is syncing while the
// next is open. Rounds reach the syncer in file order and are answered in
// that order, each after an fdatasync that began once its bytes were
// written. Only the committer (or whoever holds round) writes the file
// tail; only the syncer, or whoever holds round once lead has drained the
// pipeline, touches the idx file and its state.
type commitQueue struct {
	// round is held by the committer while it places and writes batches,
	// and by lead to stop appends (compaction's last catch-up and swap,
	// Sync, EC encode, Close). The committer never waits for it while its
	// open round holds batches, which lead waits for: it hands the open
	// round over first.
	round sync.Mutex
	// leads counts lead calls, guarded by round: a holder may move the
	// tail (compaction), so the committer places its next round at the
	// durable tail when leads has changed.
	leads uint64
	// inflight counts the rounds holding placed batches that the syncer has
	// not answered yet. Add is called under round, and so is Wait (by
	// lead).
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
	accepted []*pending // the batches written to the file, in file order
	tombs    []idxEntry // the tombstones among them
	dat      vfs.File   // the file they were written to
	end      int64      // end of the round's bytes
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

// committer places and writes batches until the volume closes; it exits
// once closing is set and nothing is queued, after the syncer has answered
// every round, so every queued batch gets an answer.
func (v *Volume) committer() {
	q := &v.commit
	rounds := make(chan *round)
	ready := make(chan struct{}, 1) // the syncer answered the round handed over
	synced := make(chan struct{})
	go v.syncer(rounds, ready, synced)
	defer func() {
		close(rounds)
		<-synced
		close(q.stopped)
	}()
	var (
		idle      = true // the syncer waits for a round
		open      *round // placed batches not handed over yet
		taken     []*pending
		lastTombs []idxEntry // tombstones of the round handed over last
		next      int64      // where the next batch goes
		leads     uint64     // q.leads when next was set
	)
	for {
		q.mu.Lock()
		taken = append(taken, q.queue...)
		q.queue = nil
		closing := q.closing
		q.mu.Unlock()
		if len(taken) > 0 {
			// With batches placed in the open round, lead waits for it
			// to be handed over: do not wait for the round lock then.
			locked := open != nil && q.round.TryLock()
			if open == nil {
				q.round.Lock()
				locked = true
			}
			if locked {
				if q.leads != leads || next == 0 {
					next, leads = v.tail.Load(), q.leads
				}
				if open == nil {
					open = &round{dat: v.dat, end: next}
					q.inflight.Add(1)
				}
				next = v.place(open, taken, lastTombs)
				taken = nil
				q.round.Unlock()
			}
		}
		if open != nil && idle {
			rounds <- open
			lastTombs, open, idle = open.tombs, nil, false
			continue
		}
		if open == nil && len(taken) == 0 && closing {
			return
		}
		select {
		case <-q.kick:
		case <-ready:
			idle = true
		}
	}
}

// syncer makes the rounds it is handed durable, publishes them and answers
// their writers, in order, and says on ready when it is done with each.
// After an fdatasync fails, no later round is trusted: the kernel may have
// dropped dirty pages they depend on.
func (v *Volume) syncer(rounds <-chan *round, ready chan<- struct{}, synced chan<- struct{}) {
	defer close(synced)
	var broken error
	for r := range rounds {
		v.syncRound(r, &broken)
		for _, p := range r.group {
			close(p.done)
		}
		v.commit.inflight.Done()
		ready <- struct{}{}
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
// placements of the committer and waits until the syncer has answered
// every round with placed batches, so the holder sees no byte in flight:
// v.tail is the end of the file's needles, and the .dat, the idx and their
// state are its own.
func (v *Volume) lead() error {
	q := &v.commit
	q.round.Lock()
	q.inflight.Wait()
	q.leads++
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

// place checks the batches taken from the queue, adds them to the open
// round r and writes the accepted ones right after its bytes; it returns
// where the next batch goes. lastTombs are the tombstones of the round
// handed over before r, which may not be in the index yet. It runs only in
// the committer, under the round lock, while the syncer may be syncing the
// round before.
func (v *Volume) place(r *round, taken []*pending, lastTombs []idxEntry) int64 {
	r.group = append(r.group, taken...)
	start := r.end
	// Writes are checked against the tombstones not yet in the index too.
	tombs := append(append([]idxEntry(nil), lastTombs...), r.tombs...)
	var accepted []*pending
	for _, p := range taken {
		state, reason := v.State()
		var deleted error
		if !p.tombstoneOnly() {
			deleted = v.deletedWrite(p, tombs)
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
			accepted = append(accepted, p)
			for _, op := range p.ops {
				if op.tombstone {
					tombs = append(tombs, op)
				}
			}
		}
	}
	if len(accepted) == 0 {
		return r.end
	}
	for _, w := range coalesce(accepted, start, r.end) {
		n, err := r.dat.WriteAt(w.buf, w.off)
		if err == nil && n < len(w.buf) {
			err = errors.New("short write")
		}
		if err != nil {
			werr := fmt.Errorf("write at %d: %w", w.off, err)
			// Nothing written here was acknowledged: cut it off so the
			// next batches start on a clean tail. What the round holds
			// already, and the round before, which may be syncing, end
			// at start and are not touched.
			if terr := r.dat.Truncate(start); terr != nil {
				v.fail(fmt.Errorf("%v; truncate back to %d: %w", werr, start, terr))
			}
			for _, p := range accepted {
				p.err = werr
			}
			r.end = start
			return start
		}
	}
	r.accepted = append(r.accepted, accepted...)
	r.tombs = tombs[len(lastTombs):]
	return r.end
}

// syncRound makes a written round durable, then publishes it to the index
// and appends its idx hints. It runs only in the syncer. broken holds the
// error of the first failed fdatasync: the round after it fails too.
func (v *Volume) syncRound(r *round, broken *error) {
	if len(r.accepted) == 0 {
		return // nothing written: every batch has its error
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
			if op.tombstone {
				v.dropPinsLocked(op.key, op.size)
			}
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
