package directory

import (
	"context"
	"sync/atomic"
	"time"
)

// Log commits commands to the FSM. On a single node (localLog) it applies
// them at once; in a cluster (Raft) it commits them through the raft log
// first, on the leader only.
type Log interface {
	// Apply commits cmd and applies it to the FSM, returning the FSM's
	// error for it. A node that does not lead returns a *NotLeaderError.
	Apply(ctx context.Context, cmd Command) error
	// Leadership returns the epoch of this node's current leadership and
	// when it started. The epoch is 0 while the node does not lead, and
	// also while a new leader has not yet applied every entry committed
	// before it: only a nonzero epoch may decide. Each leadership gets a
	// new epoch.
	Leadership() (epoch uint64, since time.Time)
	// NotLeader returns the *NotLeaderError this node answers with now.
	NotLeader() error
}

// localLog is the Log of a single-node directory: the FSM's own file is
// the durable state, and the node always leads.
type localLog struct {
	fsm    *FSM
	since  time.Time
	closed atomic.Bool
}

func newLocalLog(fsm *FSM) *localLog { return &localLog{fsm: fsm, since: time.Now()} }

func (l *localLog) Apply(_ context.Context, cmd Command) error {
	if l.closed.Load() {
		return ErrClosed
	}
	return l.fsm.Apply(cmd)
}

func (l *localLog) Leadership() (uint64, time.Time) { return 1, l.since }

func (l *localLog) NotLeader() error { return &NotLeaderError{} }
