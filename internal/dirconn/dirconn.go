// Package dirconn owns the client side of a directory cluster: one
// connection-like value that takes the addresses of the directory's nodes,
// sends each call to the node that leads, follows the NOT_LEADER answers
// of followers to the leader they name, tries the other nodes when one is
// unreachable or shutting down, backs off between rounds, and finds the
// new leader after a failover by itself. The Go client (and through it the
// gateway and the cache) and the stores' heartbeaters use it, so that no
// role needs a restart when the directory's leader changes.
//
// It also owns the wire form of the directory's UNAVAILABLE answers: an
// errdetails.ErrorInfo in Domain whose Reason tells a not-leader answer
// (metadata "leader": the leader's gRPC address, empty while an election
// runs) from a node shutting down and from a directory that answered but
// cannot serve now (no writable volume, no quorum). The directory builds
// its answers with Status; callers read them with Classify and NotLeader.
package dirconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
)

// Domain is the errdetails.ErrorInfo domain of the directory's answers.
const Domain = "directory.haybale"

// The errdetails.ErrorInfo reasons of the directory's UNAVAILABLE answers.
const (
	// ReasonNotLeader: the node does not lead; metadata "leader" holds the
	// leader's gRPC address, empty when no leader is known yet.
	ReasonNotLeader = "NOT_LEADER"
	// ReasonShuttingDown: the node is stopping; another node may serve.
	ReasonShuttingDown = "SHUTTING_DOWN"
	// ReasonUnavailable: the node that answered cannot serve the request
	// now (no writable volume, too few stores, no quorum); asking another
	// node would not help.
	ReasonUnavailable = "UNAVAILABLE"
)

// FollowsLeaderKey is the gRPC metadata key a Conn sets on every call: it
// tells a follower that the caller follows not-leader answers itself, so
// the follower answers with one rather than forward the call to the leader
// (which would hide the leader and cost every later call a hop).
const FollowsLeaderKey = "haybale-follows-leader"

// Status returns the UNAVAILABLE status the directory answers with, with
// an ErrorInfo of reason and, for ReasonNotLeader, the leader's address.
func Status(msg, reason, leader string) error {
	st := status.New(codes.Unavailable, msg)
	info := &errdetails.ErrorInfo{Reason: reason, Domain: Domain}
	if reason == ReasonNotLeader {
		info.Metadata = map[string]string{"leader": leader}
	}
	if withInfo, err := st.WithDetails(info); err == nil {
		st = withInfo
	}
	return st.Err()
}

// NotLeader returns the leader's address when err is a directory's
// not-leader answer (ok), the empty string when the leader is unknown.
func NotLeader(err error) (leader string, ok bool) {
	info := errorInfo(err)
	if info == nil || info.GetReason() != ReasonNotLeader {
		return "", false
	}
	return info.GetMetadata()["leader"], true
}

func errorInfo(err error) *errdetails.ErrorInfo {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return nil
	}
	for _, d := range st.Details() {
		if info, isInfo := d.(*errdetails.ErrorInfo); isInfo && info.GetDomain() == Domain {
			return info
		}
	}
	return nil
}

// Outcome is what a call's error says about where to send the next one.
type Outcome int

// The outcomes of Classify.
const (
	// Answered: the call succeeded, or the node answered with an error
	// another node would answer too (not found, invalid, the directory's
	// own UNAVAILABLE, a cancelled or expired call). It is final.
	Answered Outcome = iota
	// Redirected: the node does not lead; the call may be sent to the
	// leader it names, or, when it names none, again after a pause.
	Redirected
	// Unreachable: the node could not be reached, broke the connection or
	// is shutting down; another node may serve the call.
	Unreachable
)

// Classify tells what err, returned by a call to one directory node, means
// for the next attempt; leader is the leader a not-leader answer names.
func Classify(err error) (o Outcome, leader string) {
	if err == nil {
		return Answered, ""
	}
	if status.Code(err) != codes.Unavailable {
		return Answered, ""
	}
	info := errorInfo(err)
	switch {
	case info == nil, info.GetReason() == ReasonShuttingDown:
		// An UNAVAILABLE the directory did not write: the transport's.
		return Unreachable, ""
	case info.GetReason() == ReasonNotLeader:
		return Redirected, info.GetMetadata()["leader"]
	}
	return Answered, ""
}

// SplitAddrs parses a comma-separated list of host:port addresses,
// dropping blanks and duplicates. It fails on an address without a port
// and on an empty list.
func SplitAddrs(list ...string) ([]string, error) {
	var out []string
	for _, l := range list {
		for _, a := range strings.Split(l, ",") {
			a = strings.TrimSpace(a)
			if a == "" || slices.Contains(out, a) {
				continue
			}
			if _, _, err := net.SplitHostPort(a); err != nil {
				return nil, fmt.Errorf("dirconn: directory address %q: %w", a, err)
			}
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("dirconn: no directory address")
	}
	return out, nil
}

// Options configure a Conn.
type Options struct {
	// Addrs are the gRPC addresses of the directory's nodes (one for a
	// single directory). Required.
	Addrs []string
	// Credentials secure the connections; every node must present a
	// directory certificate. nil means rpc.Insecure().
	Credentials *rpc.Credentials
	// DialOptions are added to every connection after rpc.Dial's
	// defaults.
	DialOptions []grpc.DialOption
	// MinBackoff and MaxBackoff bound the pause between rounds of
	// attempts, which doubles from MinBackoff up to MaxBackoff with
	// jitter; defaults 50 ms and 1 s.
	MinBackoff, MaxBackoff time.Duration
	// FailoverTimeout bounds how long a unary call whose context has no
	// deadline keeps looking for a node that serves it; default 30 s,
	// several election timeouts.
	FailoverTimeout time.Duration
	// Logger receives a line when the node in use changes; default
	// slog.Default().
	Logger *slog.Logger
}

// maxHops bounds the redirects followed in a row without a pause, so two
// nodes with stale views cannot bounce a call between them.
const maxHops = 4

// Conn is a grpc.ClientConnInterface over a directory cluster: wrap it
// with directorypb.NewDirectoryClient. A unary call goes to the node in
// use (the last one that served, or a leader a follower named) and is
// sent again, within the call's deadline, to the leader a not-leader
// answer names, or to the next node after a transport failure, pausing
// with backoff between rounds. Calls are retried only on answers that
// say the call was not carried out or when the node became unreachable;
// every directory method is safe to repeat (a repeated Assign hands out
// other keys, never the same ones). A stream is opened on the node in use
// and not retried: its errors update the node in use, and the caller
// reopens it. Conn is safe for concurrent use.
type Conn struct {
	opts Options

	mu struct {
		sync.Mutex
		addrs   []string
		conns   map[string]*grpc.ClientConn
		current string
		closed  bool
	}
}

var _ grpc.ClientConnInterface = (*Conn)(nil)

// New returns a Conn over the nodes at opts.Addrs. Connections are made
// lazily.
func New(opts Options) (*Conn, error) {
	addrs, err := SplitAddrs(opts.Addrs...)
	if err != nil {
		return nil, err
	}
	opts.Addrs = addrs
	opts.Credentials = rpc.OrInsecure(opts.Credentials)
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 50 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(time.Second, opts.MinBackoff)
	}
	if opts.FailoverTimeout <= 0 {
		opts.FailoverTimeout = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	// gRPC's own reconnection backoff grows to two minutes; a node that
	// comes back after a crash should be usable within seconds.
	opts.DialOptions = append([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
		MinConnectTimeout: 5 * time.Second,
	})}, opts.DialOptions...)
	c := &Conn{opts: opts}
	c.mu.addrs = slices.Clone(addrs)
	c.mu.conns = map[string]*grpc.ClientConn{}
	c.mu.current = addrs[mrand.IntN(len(addrs))]
	// Check the credentials and addresses now rather than at the first
	// call.
	if _, _, err := c.pick(); err != nil {
		return nil, err
	}
	return c, nil
}

// Addrs returns the addresses the Conn knows: the ones it was given and
// the leaders followers named since.
func (c *Conn) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.mu.addrs)
}

// Current returns the address of the node calls go to now.
func (c *Conn) Current() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.current
}

// Close closes every connection. Calls after Close fail.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil
	}
	c.mu.closed = true
	var errs []error
	for _, cc := range c.mu.conns {
		errs = append(errs, cc.Close())
	}
	return errors.Join(errs...)
}

// pick returns the node in use and its connection, dialing it on first
// use.
func (c *Conn) pick() (string, *grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return "", nil, status.Error(codes.Canceled, "dirconn: closed")
	}
	addr := c.mu.current
	if cc, ok := c.mu.conns[addr]; ok {
		return addr, cc, nil
	}
	cc, err := rpc.Dial(c.opts.Credentials, addr, []pki.Role{pki.RoleDirectory}, c.opts.DialOptions...)
	if err != nil {
		return "", nil, fmt.Errorf("dirconn: %w", err)
	}
	c.mu.conns[addr] = cc
	return addr, cc, nil
}

// observe moves the node in use after a call to addr ended with err, and
// returns what err meant.
func (c *Conn) observe(addr string, err error) (Outcome, string) {
	o, leader := Classify(err)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.current != addr {
		return o, leader // another call moved on already
	}
	next := addr
	switch {
	case o == Redirected && leader != "":
		if !slices.Contains(c.mu.addrs, leader) {
			c.mu.addrs = append(c.mu.addrs, leader)
		}
		next = leader
	case o == Unreachable, o == Redirected:
		// An unreachable node, or a follower that knows no leader (it may
		// be the one cut off): try the next.
		i := slices.Index(c.mu.addrs, addr)
		next = c.mu.addrs[(i+1)%len(c.mu.addrs)]
	}
	if next != addr {
		c.mu.current = next
		c.opts.Logger.Info("directory node changed", "from", addr, "to", next, "cause", status.Convert(err).Message())
		if cc, ok := c.mu.conns[next]; ok {
			// A node that was down may be back; do not wait out gRPC's
			// reconnection backoff.
			cc.ResetConnectBackoff()
		}
	}
	return o, leader
}

// Invoke implements grpc.ClientConnInterface: see Conn for the retry rule.
func (c *Conn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	parent := ctx
	ctx = metadata.AppendToOutgoingContext(ctx, FollowsLeaderKey, "1")
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.FailoverTimeout)
		defer cancel()
	}
	wait := c.opts.MinBackoff
	hops := 0
	for {
		addr, cc, err := c.pick()
		if err != nil {
			return err
		}
		err = cc.Invoke(ctx, method, args, reply, opts...)
		o, leader := c.observe(addr, err)
		if o == Answered {
			return err
		}
		if o == Redirected && leader != "" && leader != addr && hops < maxHops {
			hops++
			continue
		}
		hops = 0
		// Full jitter over the upper half: [wait/2, wait).
		d := wait/2 + time.Duration(mrand.Int64N(int64(wait/2)+1))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			code := codes.Unavailable
			switch {
			case errors.Is(parent.Err(), context.Canceled):
				return status.FromContextError(parent.Err()).Err()
			case parent.Err() != nil:
				code = codes.DeadlineExceeded
			}
			return status.Errorf(code, "no node of the directory %s served the call in time; last answer from %s: %s",
				strings.Join(c.Addrs(), ","), addr, status.Convert(err).Message())
		case <-t.C:
		}
		wait = min(2*wait, c.opts.MaxBackoff)
	}
}

// NewStream implements grpc.ClientConnInterface: the stream is opened on
// the node in use and not retried; its errors move the node in use as a
// unary call's do, so reopening it reaches the leader.
func (c *Conn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	addr, cc, err := c.pick()
	if err != nil {
		return nil, err
	}
	ctx = metadata.AppendToOutgoingContext(ctx, FollowsLeaderKey, "1")
	cs, err := cc.NewStream(ctx, desc, method, opts...)
	if err != nil {
		c.observe(addr, err)
		return nil, err
	}
	return &observedStream{ClientStream: cs, c: c, addr: addr}, nil
}

// observedStream reports a stream's errors to its Conn.
type observedStream struct {
	grpc.ClientStream
	c    *Conn
	addr string
}

func (s *observedStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if err != nil && err != io.EOF {
		s.c.observe(s.addr, err)
	}
	return err
}

func (s *observedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil && err != io.EOF {
		s.c.observe(s.addr, err)
	}
	return err
}
