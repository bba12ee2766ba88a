package directory

import (
	"errors"
	"fmt"
)

// The errors of the Directory's methods. They are wrapped with details;
// test them with errors.Is. The gRPC adapter maps each to one status code
// (see statusOf in grpc.go).
var (
	// ErrInvalidArgument: the request is malformed or out of bounds.
	ErrInvalidArgument = errors.New("directory: invalid argument")
	// ErrUnavailable: the directory cannot serve the request now (no
	// writable volume, too few live stores, the log cannot commit); a
	// retry may succeed.
	ErrUnavailable = errors.New("directory: unavailable")
	// ErrKeysExhausted: the 64-bit key space is used up.
	ErrKeysExhausted = errors.New("directory: key space exhausted")
	// ErrVidsExhausted: every volume id was handed out; vids never wrap.
	ErrVidsExhausted = errors.New("directory: no volume id left")
	// ErrNotLeader: this node does not lead the directory cluster; the
	// error is a *NotLeaderError naming the leader when it is known.
	ErrNotLeader = errors.New("directory: not the leader")
	// ErrClosed: the directory is shutting down.
	ErrClosed = errors.New("directory: closed")
	// ErrNotClustered: a membership change asked of a single-node
	// directory (started without a raft id).
	ErrNotClustered = errors.New("directory: a single-node directory has no members to change (start it with --raft-id)")
	// ErrWrongState: the volume is not in a state the request applies to
	// (erasure-coding a writable or an EC volume).
	ErrWrongState = errors.New("directory: the volume's state does not allow it")
	// ErrBusy: another erasure-coding job runs; one runs at a time.
	ErrBusy = errors.New("directory: another erasure-coding job runs")
	// ErrNotOnStore: a store answered that it does not hold the volume
	// (StoreAPI and ECStoreAPI methods).
	ErrNotOnStore = errors.New("directory: the store does not hold the volume")
)

// NotLeaderError is returned by a node that does not lead for a request
// only the leader may serve. Leader is the leader's client (gRPC) address,
// empty when no leader is known (an election is running).
type NotLeaderError struct {
	Leader string
}

func (e *NotLeaderError) Error() string {
	if e.Leader == "" {
		return "directory: not the leader, and no leader is known yet"
	}
	return fmt.Sprintf("directory: not the leader; the leader is %s", e.Leader)
}

// Is makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }
