package rpc_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/rpc/rpctest"
)

const (
	checkMethod = "/grpc.health.v1.Health/Check"
	watchMethod = "/grpc.health.v1.Health/Watch"
)

// serve starts a health server with creds and policy and returns its
// address. The unary interceptor records the caller it saw.
func serve(t *testing.T, creds *rpc.Credentials, policy rpc.Policy, seen chan<- rpc.Caller) string {
	t.Helper()
	srv, err := rpc.NewServer(creds, policy, rpc.ServerOptions{Unary: []grpc.UnaryServerInterceptor{
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if c, ok := rpc.CallerFrom(ctx); ok && seen != nil {
				seen <- c
			}
			return h(ctx, req)
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

func check(t *testing.T, creds *rpc.Credentials, addr string, roles ...pki.Role) error {
	t.Helper()
	conn, err := rpc.Dial(creds, addr, roles)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func watch(t *testing.T, creds *rpc.Credentials, addr string) error {
	t.Helper()
	conn, err := rpc.Dial(creds, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

func TestRoleCheck(t *testing.T) {
	ca := rpctest.New(t)
	policy := rpc.Policy{checkMethod: {pki.RoleGateway}, watchMethod: {pki.RoleOperator}}
	seen := make(chan rpc.Caller, 4)
	addr := serve(t, ca.Creds(t, pki.RoleDirectory, "dir"), policy, seen)

	if err := check(t, ca.Creds(t, pki.RoleGateway, "gw1"), addr); err != nil {
		t.Fatalf("gateway refused: %v", err)
	}
	if c := <-seen; c.Role != pki.RoleGateway || c.Name != "gw1" {
		t.Fatalf("handler saw caller %v", c)
	}
	if err := check(t, ca.Creds(t, pki.RoleStore, "s1"), addr); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("store calling a gateway method: %v, want PermissionDenied", err)
	}
	// Streams are checked too.
	if err := watch(t, ca.Creds(t, pki.RoleGateway, "gw1"), addr); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("gateway watching: %v, want PermissionDenied", err)
	}
	if err := watch(t, ca.Creds(t, pki.RoleOperator, "ops"), addr); err != nil {
		t.Fatalf("operator watching: %v", err)
	}
}

func TestUnlistedMethodRefused(t *testing.T) {
	ca := rpctest.New(t)
	addr := serve(t, ca.Creds(t, pki.RoleDirectory, "dir"), rpc.Policy{}, nil)
	for _, r := range pki.Roles {
		if err := check(t, ca.Creds(t, r, "x"), addr); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("%s calling an unlisted method: %v", r, err)
		}
	}
}

func TestUnauthenticatedRefused(t *testing.T) {
	ca := rpctest.New(t)
	policy := rpc.Policy{checkMethod: pki.Roles}
	addr := serve(t, ca.Creds(t, pki.RoleDirectory, "dir"), policy, nil)
	// Plain text against a TLS server.
	if err := check(t, rpc.Insecure(), addr); err == nil {
		t.Fatal("a plain-text call was served")
	}
	// A certificate from another CA.
	other := rpctest.New(t)
	if err := check(t, other.Creds(t, pki.RoleGateway, "gw"), addr); err == nil {
		t.Fatal("a certificate from another CA was accepted")
	}
}

func TestDialChecksServerRole(t *testing.T) {
	ca := rpctest.New(t)
	policy := rpc.Policy{checkMethod: pki.Roles}
	addr := serve(t, ca.Creds(t, pki.RoleGateway, "rogue"), policy, nil)
	if err := check(t, ca.Creds(t, pki.RoleStore, "s1"), addr, pki.RoleStore); status.Code(err) != codes.Unavailable {
		t.Fatalf("dialing a gateway as a store: %v, want Unavailable", err)
	}
	if err := check(t, ca.Creds(t, pki.RoleStore, "s1"), addr, pki.RoleGateway); err != nil {
		t.Fatalf("dialing the right role: %v", err)
	}
}

func TestInsecurePlane(t *testing.T) {
	addr := serve(t, rpc.Insecure(), rpc.Policy{}, nil)
	if err := check(t, rpc.Insecure(), addr); err != nil {
		t.Fatalf("insecure call: %v", err)
	}
}

func TestNilCredentialsRefused(t *testing.T) {
	if _, err := rpc.Dial(nil, "127.0.0.1:1", nil); err == nil {
		t.Fatal("Dial with nil credentials")
	}
	if _, err := rpc.NewServer(nil, rpc.Policy{}, rpc.ServerOptions{}); err == nil {
		t.Fatal("NewServer with nil credentials")
	}
	if _, err := rpc.NewServer(&rpc.Credentials{}, rpc.Policy{}, rpc.ServerOptions{}); err == nil {
		t.Fatal("NewServer with zero credentials")
	}
	if _, err := rpc.Dial(rpc.TLS(nil), "127.0.0.1:1", nil); err == nil {
		t.Fatal("Dial with TLS(nil)")
	}
}

func TestRequireStore(t *testing.T) {
	ca := rpctest.New(t)
	seen := make(chan error, 1)
	srv, err := rpc.NewServer(ca.Creds(t, pki.RoleDirectory, "dir"), rpc.Policy{checkMethod: pki.Roles}, rpc.ServerOptions{Unary: []grpc.UnaryServerInterceptor{
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			seen <- rpc.RequireStore(ctx, "s1")
			return h(ctx, req)
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Stop()
	for _, tc := range []struct {
		role pki.Role
		name string
		ok   bool
	}{{pki.RoleStore, "s1", true}, {pki.RoleStore, "s2", false}, {pki.RoleGateway, "s1", false}} {
		if err := check(t, ca.Creds(t, tc.role, tc.name), ln.Addr().String()); err != nil {
			t.Fatal(err)
		}
		if err := <-seen; (err == nil) != tc.ok {
			t.Errorf("%s/%s speaking for s1: %v", tc.role, tc.name, err)
		}
	}
	if err := rpc.RequireStore(context.Background(), "s1"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("RequireStore outside a call: %v", err)
	}
}

// BenchmarkUnaryCall measures one unary call on an established connection
// with mutual TLS and the role check, and on the insecure plane.
func BenchmarkUnaryCall(b *testing.B) {
	ca := rpctest.New(b)
	for _, tc := range []struct {
		name           string
		server, client *rpc.Credentials
	}{
		{"tls", ca.Creds(b, pki.RoleDirectory, "dir"), ca.Creds(b, pki.RoleGateway, "gw")},
		{"insecure", rpc.Insecure(), rpc.Insecure()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			srv, err := rpc.NewServer(tc.server, rpc.Policy{checkMethod: {pki.RoleGateway}}, rpc.ServerOptions{})
			if err != nil {
				b.Fatal(err)
			}
			healthpb.RegisterHealthServer(srv, health.NewServer())
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go srv.Serve(ln)
			defer srv.Stop()
			conn, err := rpc.Dial(tc.client, ln.Addr().String(), nil)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			c := healthpb.NewHealthClient(conn)
			ctx := context.Background()
			if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
