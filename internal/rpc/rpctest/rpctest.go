// Package rpctest is a test helper: an in-memory cluster CA that issues
// rpc.Credentials for any role and name, valid for 127.0.0.1 and
// localhost.
package rpctest

import (
	"testing"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
)

// CA is an in-memory cluster CA.
type CA struct {
	*pki.CA
}

// New returns a fresh CA, failing t on error.
func New(t testing.TB) *CA {
	t.Helper()
	ca, err := pki.NewCA("rpctest CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{ca}
}

// Node issues a certificate for role/name valid on the loopback host.
func (c *CA) Node(t testing.TB, role pki.Role, name string) *pki.Node {
	t.Helper()
	is, err := c.Issue(pki.IssueOptions{Identity: pki.Identity{Role: role, Name: name}, Hosts: []string{"127.0.0.1", "::1", "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	n, err := c.CA.Node(is)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Creds returns TLS credentials for role/name.
func (c *CA) Creds(t testing.TB, role pki.Role, name string) *rpc.Credentials {
	t.Helper()
	return rpc.TLS(c.Node(t, role, name))
}
