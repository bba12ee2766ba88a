package directory

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/haybale/haybale/internal/dirconn"
	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
)

// forwardedKey is the gRPC metadata key a follower sets on a call it
// forwards to the leader; a call that carries it is never forwarded again,
// so a stale view cannot send a call around the cluster.
const forwardedKey = "haybale-forwarded-by"

// forwarder sends the unary calls a follower cannot serve to the leader
// its not-leader error names, with the directory's own credentials, so
// that a client that knows one node still reaches the leader. The
// follower has already checked the caller's role against Policy; the
// leader admits the forwarded call as from a directory (Policy lists the
// directory role on every forwarded method). One connection is kept per
// leader address.
type forwarder struct {
	creds  *rpc.Credentials
	self   string
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

func newForwarder(creds *rpc.Credentials, self string) *forwarder {
	return &forwarder{creds: creds, self: self, conns: map[string]*grpc.ClientConn{}}
}

// to returns a client of the leader err names, and the context to call it
// with; ok is false when the call is not to be forwarded: err names no
// leader, the call was forwarded to this node already, or its caller
// follows the leader itself (internal/dirconn sets dirconn.FollowsLeaderKey)
// and is better served by the not-leader answer.
func (f *forwarder) to(ctx context.Context, err error) (_ directorypb.DirectoryClient, _ context.Context, ok bool) {
	var nl *NotLeaderError
	if f == nil || !errors.As(err, &nl) || nl.Leader == "" || nl.Leader == f.self {
		return nil, nil, false
	}
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(forwardedKey)) > 0 || len(md.Get(dirconn.FollowsLeaderKey)) > 0 {
		return nil, nil, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, nil, false
	}
	conn, found := f.conns[nl.Leader]
	if !found {
		var derr error
		if conn, derr = rpc.Dial(f.creds, nl.Leader, []pki.Role{pki.RoleDirectory}); derr != nil {
			return nil, nil, false
		}
		f.conns[nl.Leader] = conn
	}
	return directorypb.NewDirectoryClient(conn), metadata.AppendToOutgoingContext(ctx, forwardedKey, f.self), true
}

// Close closes the connections to leaders.
func (f *forwarder) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	var errs []error
	for addr, c := range f.conns {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("forwarding connection to %s: %w", addr, err))
		}
	}
	return errors.Join(errs...)
}
