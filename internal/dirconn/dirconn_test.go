package dirconn_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/dirconn"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
)

// fakeNode is a directory node whose Lookup and Heartbeat answer with
// what answer returns.
type fakeNode struct {
	directorypb.UnimplementedDirectoryServer
	addr   string
	calls  atomic.Int32
	mu     sync.Mutex
	answer func() error
}

func (f *fakeNode) reply() error {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.answer()
}

func (f *fakeNode) Lookup(_ context.Context, req *directorypb.LookupRequest) (*directorypb.LookupResponse, error) {
	if err := f.reply(); err != nil {
		return nil, err
	}
	return &directorypb.LookupResponse{Vid: req.GetVid()}, nil
}

func (f *fakeNode) Heartbeat(stream directorypb.Directory_HeartbeatServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := f.reply(); err != nil {
		return err
	}
	return stream.Send(&directorypb.HeartbeatResponse{IntervalMs: 1000})
}

func startNode(t *testing.T, answer func() error) *fakeNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := rpc.NewServer(rpc.Insecure(), nil, rpc.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNode{addr: ln.Addr().String(), answer: answer}
	directorypb.RegisterDirectoryServer(srv, f)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return f
}

func ok() error { return nil }

func notLeader(leader string) func() error {
	return func() error { return dirconn.Status("not the leader", dirconn.ReasonNotLeader, leader) }
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func newConn(t *testing.T, addrs ...string) *dirconn.Conn {
	t.Helper()
	c, err := dirconn.New(dirconn.Options{Addrs: addrs, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func lookup(ctx context.Context, c *dirconn.Conn) error {
	_, err := directorypb.NewDirectoryClient(c).Lookup(ctx, &directorypb.LookupRequest{Vid: 7})
	return err
}

func TestFollowsTheLeaderAFollowerNames(t *testing.T) {
	leader := startNode(t, ok)
	follower := startNode(t, notLeader(leader.addr))
	other := startNode(t, notLeader(leader.addr))
	c := newConn(t, follower.addr, other.addr, leader.addr)
	for range 5 {
		if err := lookup(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	if c.Current() != leader.addr {
		t.Errorf("current node %s, want the leader %s", c.Current(), leader.addr)
	}
	if n := leader.calls.Load(); n != 5 {
		t.Errorf("leader served %d calls, want 5", n)
	}
	// Once the leader is known, the followers are asked no more: at most
	// the first call went through one of them.
	if n := follower.calls.Load() + other.calls.Load(); n > 1 {
		t.Errorf("followers asked %d times, want at most 1", n)
	}
}

func TestLeaderNotInTheListIsFollowed(t *testing.T) {
	leader := startNode(t, ok)
	follower := startNode(t, notLeader(leader.addr))
	c := newConn(t, follower.addr)
	if err := lookup(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if c.Current() != leader.addr || len(c.Addrs()) != 2 {
		t.Errorf("current %s, addrs %v; want the named leader %s added", c.Current(), c.Addrs(), leader.addr)
	}
}

func TestSkipsUnreachableAndShuttingDownNodes(t *testing.T) {
	down := startNode(t, func() error { return dirconn.Status("shutting down", dirconn.ReasonShuttingDown, "") })
	live := startNode(t, ok)
	c := newConn(t, deadAddr(t), down.addr, deadAddr(t), live.addr)
	for range 3 {
		if err := lookup(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	if c.Current() != live.addr {
		t.Errorf("current %s, want %s", c.Current(), live.addr)
	}
}

func TestAnswersAreNotRetried(t *testing.T) {
	for name, answer := range map[string]error{
		"directory unavailable": dirconn.Status("no writable volume", dirconn.ReasonUnavailable, ""),
		"not found":             status.Error(codes.NotFound, "no such volume"),
		"invalid":               status.Error(codes.InvalidArgument, "bad"),
	} {
		t.Run(name, func(t *testing.T) {
			a := startNode(t, func() error { return answer })
			b := startNode(t, ok)
			c := newConn(t, a.addr, b.addr)
			// Make a the node in use: New picks one at random.
			for c.Current() != a.addr {
				c = newConn(t, a.addr, b.addr)
			}
			a.calls.Store(0)
			b.calls.Store(0)
			err := lookup(context.Background(), c)
			if status.Code(err) != status.Code(answer) || status.Convert(err).Message() != status.Convert(answer).Message() {
				t.Fatalf("got %v, want %v", err, answer)
			}
			if a.calls.Load() != 1 || b.calls.Load() != 0 {
				t.Errorf("calls a=%d b=%d, want 1 and 0", a.calls.Load(), b.calls.Load())
			}
		})
	}
}

func TestNoLeaderEndsAtTheDeadline(t *testing.T) {
	a := startNode(t, notLeader(""))
	b := startNode(t, notLeader(""))
	c := newConn(t, a.addr, b.addr, deadAddr(t))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := lookup(ctx, c)
	if code := status.Code(err); code != codes.DeadlineExceeded && code != codes.Unavailable {
		t.Fatalf("got %v, want DEADLINE_EXCEEDED or UNAVAILABLE", err)
	}
	if a.calls.Load() < 2 || b.calls.Load() < 2 {
		t.Errorf("calls a=%d b=%d: every node should have been asked again", a.calls.Load(), b.calls.Load())
	}
}

func TestFailoverTimeoutBoundsACallWithoutDeadline(t *testing.T) {
	c, err := dirconn.New(dirconn.Options{Addrs: []string{deadAddr(t), deadAddr(t)}, MinBackoff: 5 * time.Millisecond,
		FailoverTimeout: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = lookup(context.Background(), c)
	if status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want UNAVAILABLE", err)
	}
}

func TestCallerCancelIsReported(t *testing.T) {
	c := newConn(t, deadAddr(t))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if err := lookup(ctx, c); status.Code(err) != codes.Canceled {
		t.Fatalf("got %v, want CANCELED", err)
	}
}

func TestStreamErrorsMoveToTheLeader(t *testing.T) {
	leader := startNode(t, ok)
	follower := startNode(t, notLeader(leader.addr))
	c := newConn(t, follower.addr, leader.addr)
	open := func() error {
		stream, err := directorypb.NewDirectoryClient(c).Heartbeat(context.Background())
		if err != nil {
			return err
		}
		if err := stream.Send(&directorypb.HeartbeatRequest{StoreId: "s1"}); err != nil && err != io.EOF {
			return err
		}
		_, err = stream.Recv()
		stream.CloseSend()
		return err
	}
	err := open()
	if err != nil {
		if l, isNL := dirconn.NotLeader(err); !isNL || l != leader.addr {
			t.Fatalf("first stream: %v, want success or a not-leader answer naming %s", err, leader.addr)
		}
		if err := open(); err != nil {
			t.Fatalf("stream reopened after the redirect: %v", err)
		}
	}
	if c.Current() != leader.addr {
		t.Errorf("current %s, want the leader %s", c.Current(), leader.addr)
	}
}

func TestClassify(t *testing.T) {
	cases := []struct {
		err    error
		want   dirconn.Outcome
		leader string
	}{
		{nil, dirconn.Answered, ""},
		{status.Error(codes.Unavailable, "connection refused"), dirconn.Unreachable, ""},
		{dirconn.Status("x", dirconn.ReasonShuttingDown, ""), dirconn.Unreachable, ""},
		{dirconn.Status("x", dirconn.ReasonNotLeader, "h:1"), dirconn.Redirected, "h:1"},
		{dirconn.Status("x", dirconn.ReasonNotLeader, ""), dirconn.Redirected, ""},
		{dirconn.Status("x", dirconn.ReasonUnavailable, ""), dirconn.Answered, ""},
		{status.Error(codes.DeadlineExceeded, "slow"), dirconn.Answered, ""},
		{errors.New("plain"), dirconn.Answered, ""},
	}
	for _, tc := range cases {
		if o, l := dirconn.Classify(tc.err); o != tc.want || l != tc.leader {
			t.Errorf("Classify(%v) = %v %q, want %v %q", tc.err, o, l, tc.want, tc.leader)
		}
	}
}

func TestSplitAddrs(t *testing.T) {
	got, err := dirconn.SplitAddrs(" a:1, b:2,,a:1", "c:3")
	if err != nil || len(got) != 3 || got[0] != "a:1" || got[1] != "b:2" || got[2] != "c:3" {
		t.Errorf("SplitAddrs = %v, %v", got, err)
	}
	for _, bad := range []string{"", " , ", "nohost", "a:1,b"} {
		if _, err := dirconn.SplitAddrs(bad); err == nil {
			t.Errorf("SplitAddrs(%q) accepted", bad)
		}
	}
	if _, err := dirconn.New(dirconn.Options{}); err == nil {
		t.Error("New without addresses accepted")
	}
}

var _ grpc.ClientConnInterface = (*dirconn.Conn)(nil)
