package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/haybale/haybale/internal/pki"
)

// runCLI runs the haybale command line with args and returns its output
// and error.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestCertInitAndIssue(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	if _, err := runCLI(t, "cert", "init", "--ca-dir", caDir); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "cert", "init", "--ca-dir", caDir); err == nil {
		t.Fatal("a second init overwrote the CA")
	}
	out, err := runCLI(t, "cert", "issue", "--ca-dir", caDir, "--role", "store", "--name", "store1", "--host", "127.0.0.1,store1.example")
	if err != nil {
		t.Fatal(err)
	}
	nodeDir := filepath.Join(caDir, "store-store1")
	if !strings.Contains(out, nodeDir) || strings.Contains(out, "PRIVATE KEY") {
		t.Fatalf("issue printed %q", out)
	}
	for _, f := range []string{filepath.Join(caDir, pki.CAKeyFile), filepath.Join(nodeDir, pki.NodeKeyFile)} {
		st, err := os.Stat(f)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", f, st, err)
		}
	}
	node, err := pki.LoadNode(nodeDir)
	if err != nil || node.Identity != (pki.Identity{Role: pki.RoleStore, Name: "store1"}) {
		t.Fatalf("issued node: %v %v", node, err)
	}
	for _, args := range [][]string{
		{"--role", "root", "--name", "x", "--host", "h"},
		{"--role", "store", "--name", "a b", "--host", "h"},
		{"--role", "store", "--name", "s2"}, // a server without --host
	} {
		if _, err := runCLI(t, append([]string{"cert", "issue", "--ca-dir", caDir}, args...)...); err == nil {
			t.Errorf("issue %v succeeded", args)
		}
	}
	if _, err := runCLI(t, "cert", "issue", "--ca-dir", caDir, "--role", "operator", "--name", "alice"); err != nil {
		t.Errorf("an operator certificate needs no host: %v", err)
	}
}

// Cluster roles refuse to start without TLS material, and with a
// certificate of another role.
func TestRolesRefuseToStartWithoutTLS(t *testing.T) {
	base := t.TempDir()
	secret := filepath.Join(base, "secret")
	if err := os.WriteFile(secret, []byte(strings.Repeat("s", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string][]string{
		"directory": {"directory", "--dir", filepath.Join(base, "d"), "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"},
		"store":     {"store", "--dir", filepath.Join(base, "s"), "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--directory", "127.0.0.1:1", "--secret-file", secret},
		"cache":     {"cache", "--directory", "127.0.0.1:1", "--http", "127.0.0.1:0", "--internal", "127.0.0.1:0"},
		"gateway":   {"gateway", "--directory", "127.0.0.1:1", "--http", "127.0.0.1:0"},
	}
	for name, args := range cases {
		if _, err := runCLI(t, args...); err == nil || !strings.Contains(err.Error(), "no TLS material") {
			t.Errorf("%s without --certs-dir: %v, want a refusal", name, err)
		}
	}
	caDir := filepath.Join(base, "ca")
	if _, err := runCLI(t, "cert", "init", "--ca-dir", caDir); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "cert", "issue", "--ca-dir", caDir, "--role", "gateway", "--name", "gw", "--host", "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	args := append(cases["directory"], "--certs-dir", filepath.Join(caDir, "gateway-gw"))
	if _, err := runCLI(t, args...); err == nil || !strings.Contains(err.Error(), "needs a directory certificate") {
		t.Errorf("directory with a gateway certificate: %v", err)
	}
	// A store joining a directory needs the cluster secret.
	noSecret := []string{"store", "--insecure", "--dir", filepath.Join(base, "s2"), "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--directory", "127.0.0.1:1"}
	if _, err := runCLI(t, noSecret...); err == nil || !strings.Contains(err.Error(), "--secret-file is required") {
		t.Errorf("store without a secret: %v", err)
	}
}
