// Package rpc is the one way haybale dials and serves gRPC. It owns the
// transport security of the internal plane (mutual TLS from the cluster CA,
// or an explicitly insecure plane), the message size limit, keepalive and
// stream limits, and authorization: every server runs an interceptor that
// admits a call only when the caller's certificate names a role the
// method's Policy lists. A method missing from the policy is refused to
// everyone.
//
// Every grpc.NewClient and grpc.NewServer of the project goes through Dial
// and NewServer, which refuse nil Credentials, so no caller can forget
// TLS. Insecure credentials exist for `--insecure` and for tests; with them
// calls carry no identity and the role checks are off.
package rpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/pki"
)

// MaxMessageSize is the largest gRPC message sent or accepted, both ways:
// 64 MiB of needle data (DESIGN: messages may be up to 64 MiB) plus 64 KiB
// for the message's own fields.
const MaxMessageSize = 64<<20 + 64<<10

// Server limits.
const (
	// MaxConcurrentStreams bounds the calls in flight on one connection.
	MaxConcurrentStreams = 256
	// ConnectionTimeout bounds the TLS and HTTP/2 handshake of a new
	// connection.
	ConnectionTimeout = 10 * time.Second
	// KeepaliveTime is how long a connection may sit silent before the
	// server pings it; KeepaliveTimeout how long the ping may go
	// unanswered before the connection is closed.
	KeepaliveTime    = 2 * time.Minute
	KeepaliveTimeout = 20 * time.Second
	// MinPingInterval is the shortest interval between client pings the
	// server tolerates; a client pinging faster is disconnected.
	MinPingInterval = 10 * time.Second
	// ClientKeepaliveTime is the silence after which a client pings the
	// server while calls are open (heartbeat and copy streams).
	ClientKeepaliveTime = 30 * time.Second
)

// Credentials say how a process takes part in the internal plane. Build
// them with TLS or Insecure; the zero value is not usable.
type Credentials struct {
	node     *pki.Node
	insecure bool
}

// TLS returns credentials for mutual TLS with node's certificate and CA.
// TLS(nil) returns credentials that Dial and NewServer refuse.
func TLS(node *pki.Node) *Credentials { return &Credentials{node: node} }

// Insecure returns credentials for a plane without transport security or
// authentication: calls are plain text and every method is open. It is for
// `--insecure` clusters and tests.
func Insecure() *Credentials { return &Credentials{insecure: true} }

// OrInsecure returns c, or Insecure credentials when c is nil. Library
// options use it so that a nil field means what the documentation says;
// cmd/haybale never passes nil.
func OrInsecure(c *Credentials) *Credentials {
	if c == nil {
		return Insecure()
	}
	return c
}

// IsInsecure reports whether c is the insecure plane.
func (c *Credentials) IsInsecure() bool { return c.insecure }

// Identity returns the identity of the process's certificate, and false
// on the insecure plane.
func (c *Credentials) Identity() (pki.Identity, bool) {
	if c.insecure || c.node == nil {
		return pki.Identity{}, false
	}
	return c.node.Identity, true
}

// Node returns the TLS material, nil on the insecure plane.
func (c *Credentials) Node() *pki.Node {
	if c.insecure {
		return nil
	}
	return c.node
}

func (c *Credentials) check() error {
	switch {
	case c == nil:
		return errors.New("rpc: no credentials (use rpc.TLS, or rpc.Insecure for an unauthenticated plane)")
	case !c.insecure && c.node == nil:
		return errors.New("rpc: zero Credentials (use rpc.TLS or rpc.Insecure)")
	}
	return nil
}

// Dial returns a client connection to the gRPC server at addr (made
// lazily, as grpc.NewClient does). With TLS credentials the server must
// present a certificate from the cluster CA valid for addr's host, naming
// one of serverRoles (any role when none is given). opts are added after
// the defaults.
func Dial(c *Credentials, addr string, serverRoles []pki.Role, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	var tc credentials.TransportCredentials
	if c.insecure {
		tc = insecure.NewCredentials()
	} else {
		tc = credentials.NewTLS(c.node.ClientTLSExpecting(serverRoles...))
	}
	dopts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(tc),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: ClientKeepaliveTime, Timeout: KeepaliveTimeout}),
	}, opts...)
	conn, err := grpc.NewClient(addr, dopts...)
	if err != nil {
		return nil, fmt.Errorf("rpc: dial %s: %w", addr, err)
	}
	return conn, nil
}

// Policy maps a method's full name ("/haybale.v1.Store/Write") to the
// roles allowed to call it. A method absent from the policy is refused to
// every caller on a TLS plane.
type Policy map[string][]pki.Role

// Allows reports whether role may call method.
func (p Policy) Allows(method string, role pki.Role) bool {
	for _, r := range p[method] {
		if r == role {
			return true
		}
	}
	return false
}

// Covers returns an error naming the methods of sd that p does not list,
// so a test can keep a service's policy complete.
func (p Policy) Covers(sd *grpc.ServiceDesc) error {
	var missing []string
	for _, m := range sd.Methods {
		if name := "/" + sd.ServiceName + "/" + m.MethodName; len(p[name]) == 0 {
			missing = append(missing, name)
		}
	}
	for _, s := range sd.Streams {
		if name := "/" + sd.ServiceName + "/" + s.StreamName; len(p[name]) == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("rpc: policy lists no roles for %v", missing)
	}
	return nil
}

// Caller is the authenticated caller of a call.
type Caller struct {
	pki.Identity
}

type callerKey struct{}

// CallerFrom returns the caller of the call ctx belongs to, and false on
// the insecure plane (or outside a call served by NewServer).
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// RequireStore returns nil when the call is from the store whose
// certificate names id, or when the plane is insecure; otherwise a
// PERMISSION_DENIED status. The directory checks heartbeats with it.
func RequireStore(ctx context.Context, id string) error {
	c, ok := CallerFrom(ctx)
	if !ok {
		if insecureCall(ctx) {
			return nil
		}
		return status.Error(codes.PermissionDenied, "caller not authenticated")
	}
	if c.Role != pki.RoleStore || c.Name != id {
		return status.Errorf(codes.PermissionDenied, "%s may not speak for store %q", c.Identity, id)
	}
	return nil
}

type insecureKey struct{}

func insecureCall(ctx context.Context) bool {
	v, _ := ctx.Value(insecureKey{}).(bool)
	return v
}

// authorize returns the context of an admitted call, or the status
// refusing it.
func authorize(ctx context.Context, insecurePlane bool, policy Policy, method string) (context.Context, error) {
	if insecurePlane {
		return context.WithValue(ctx, insecureKey{}, true), nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer information")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "not a TLS connection")
	}
	id, err := pki.PeerIdentity(&ti.State)
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	if !policy.Allows(method, id.Role) {
		return nil, status.Errorf(codes.PermissionDenied, "%s may not call %s", id, method)
	}
	return context.WithValue(ctx, callerKey{}, Caller{Identity: id}), nil
}

// ServerOptions are the parts of a server NewServer does not fix.
type ServerOptions struct {
	// Unary and Stream interceptors run after the authorization check
	// (metrics, panic recovery).
	Unary  []grpc.UnaryServerInterceptor
	Stream []grpc.StreamServerInterceptor
	// ConnectionTimeout bounds a new connection's handshake; default
	// ConnectionTimeout.
	ConnectionTimeout time.Duration
}

// NewServer returns a gRPC server that serves with c's credentials,
// requires on a TLS plane a client certificate from the cluster CA, and
// admits each call only when policy allows the caller's role. Register
// the service on it, then Serve.
func NewServer(c *Credentials, policy Policy, opts ServerOptions) (*grpc.Server, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	insecurePlane := c.insecure
	if opts.ConnectionTimeout <= 0 {
		opts.ConnectionTimeout = ConnectionTimeout
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := authorize(ctx, insecurePlane, policy, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := authorize(ss.Context(), insecurePlane, policy, info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
	}
	sopts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.ConnectionTimeout(opts.ConnectionTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: MinPingInterval, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(append([]grpc.UnaryServerInterceptor{unary}, opts.Unary...)...),
		grpc.ChainStreamInterceptor(append([]grpc.StreamServerInterceptor{stream}, opts.Stream...)...),
	}
	if !insecurePlane {
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(c.node.ServerTLS())))
	}
	return grpc.NewServer(sopts...), nil
}

// wrappedStream carries the authorized context into a stream handler.
type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }
