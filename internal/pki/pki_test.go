package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIssueLoadAndIdentity(t *testing.T) {
	ca, err := NewCA("test CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Save(caDir); err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(caDir); err == nil {
		t.Fatal("Save over an existing CA succeeded")
	}
	st, err := os.Stat(filepath.Join(caDir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode %v, want 0600", st.Mode().Perm())
	}
	loaded, err := LoadCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	is, err := loaded.Issue(IssueOptions{Identity: Identity{Role: RoleStore, Name: "store-1"}, Hosts: []string{"127.0.0.1", "store1.example"}})
	if err != nil {
		t.Fatal(err)
	}
	nodeDir := filepath.Join(t.TempDir(), "store-1")
	if err := loaded.SaveNode(nodeDir, is); err != nil {
		t.Fatal(err)
	}
	st, err = os.Stat(filepath.Join(nodeDir, NodeKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("node key mode %v, want 0600", st.Mode().Perm())
	}
	node, err := LoadNode(nodeDir)
	if err != nil {
		t.Fatal(err)
	}
	if node.Identity != (Identity{Role: RoleStore, Name: "store-1"}) {
		t.Fatalf("identity %v", node.Identity)
	}
	leaf := node.Cert.Leaf
	if len(leaf.IPAddresses) != 1 || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "store1.example" {
		t.Fatalf("hosts: %v %v", leaf.IPAddresses, leaf.DNSNames)
	}
	if leaf.Subject.CommonName != "store-1" || leaf.Subject.OrganizationalUnit[0] != "store" {
		t.Fatalf("subject %v", leaf.Subject)
	}
	// A key readable by others is refused.
	if err := os.Chmod(filepath.Join(nodeDir, NodeKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadNode(nodeDir); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("LoadNode with a 0644 key: %v", err)
	}
}

func TestLoadNodeRefusesAnotherCA(t *testing.T) {
	ca1, _ := NewCA("one", 0)
	ca2, _ := NewCA("two", 0)
	is, err := ca2.Issue(IssueOptions{Identity: Identity{Role: RoleGateway, Name: "gw"}})
	if err != nil {
		t.Fatal(err)
	}
	// A folder whose ca.crt is ca1 but whose cert is signed by ca2.
	dir := t.TempDir()
	if err := ca1.SaveNode(dir, is); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadNode(dir); err == nil {
		t.Fatal("a certificate from another CA loaded")
	}
}

func TestIdentityValidation(t *testing.T) {
	ca, _ := NewCA("ca", 0)
	for _, id := range []Identity{
		{Role: "admin", Name: "x"},
		{Role: RoleStore, Name: ""},
		{Role: RoleStore, Name: "a/b"},
		{Role: RoleStore, Name: strings.Repeat("a", MaxNameLen+1)},
	} {
		if _, err := ca.Issue(IssueOptions{Identity: id}); err == nil {
			t.Errorf("issued %+v", id)
		}
	}
	// Two identities, or none, is no identity.
	for _, uris := range [][]*url.URL{
		nil,
		{{Scheme: "haybale", Host: "store", Path: "/a"}, {Scheme: "haybale", Host: "store", Path: "/b"}},
		{{Scheme: "haybale", Host: "root", Path: "/a"}},
		{{Scheme: "https", Host: "store", Path: "/a"}},
	} {
		if _, err := IdentityOf(&x509.Certificate{URIs: uris}); !errors.Is(err, ErrNoIdentity) {
			t.Errorf("IdentityOf(%v) = %v, want ErrNoIdentity", uris, err)
		}
	}
	if _, err := PeerIdentity(&tls.ConnectionState{}); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("PeerIdentity of an unverified connection: %v", err)
	}
}

func TestCertLifetimeCappedByCA(t *testing.T) {
	ca, _ := NewCA("ca", 48*3600e9)
	is, err := ca.Issue(IssueOptions{Identity: Identity{Role: RoleOperator, Name: "ops"}})
	if err != nil {
		t.Fatal(err)
	}
	if is.Cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Fatalf("certificate outlives its CA: %v > %v", is.Cert.NotAfter, ca.Cert.NotAfter)
	}
}

// handshake runs a TLS handshake between client and server configurations
// over an in-memory pipe and returns the server's error.
func handshake(t *testing.T, server, client *tls.Config) error {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan error, 1)
	go func() {
		c := tls.Client(a, client)
		err := c.Handshake()
		if err == nil {
			// TLS 1.3: the server's verdict on the client certificate
			// arrives after the client's handshake; a read surfaces it.
			a.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
		}
		done <- err
	}()
	s := tls.Server(b, server)
	serr := s.Handshake()
	if serr == nil {
		s.Write([]byte{1})
	}
	s.Close()
	<-done
	return serr
}

func TestServerTLSRequiringRole(t *testing.T) {
	ca, err := NewCA("test CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	node := func(role Role, name string) *Node {
		is, err := ca.Issue(IssueOptions{Identity: Identity{Role: role, Name: name}, Hosts: []string{"127.0.0.1"}})
		if err != nil {
			t.Fatal(err)
		}
		n, err := ca.Node(is)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	server := node(RoleDirectory, "d1").ServerTLSRequiring(RoleDirectory)
	client := func(n *Node) *tls.Config {
		c := n.ClientTLS()
		c.ServerName = "127.0.0.1"
		return c
	}
	if err := handshake(t, server, client(node(RoleDirectory, "d2"))); err != nil {
		t.Fatalf("a directory was refused: %v", err)
	}
	if err := handshake(t, server, client(node(RoleStore, "s1"))); err == nil || !strings.Contains(err.Error(), "store/s1") {
		t.Fatalf("a store was admitted or refused for another reason: %v", err)
	}
	noCert := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.Pool(), ServerName: "127.0.0.1"}
	if err := handshake(t, server, noCert); err == nil {
		t.Fatal("a client without a certificate was admitted")
	}
	if err := handshake(t, node(RoleDirectory, "d1").ServerTLSRequiring(), client(node(RoleStore, "s1"))); err != nil {
		t.Fatalf("with no roles every cluster certificate is admitted: %v", err)
	}
}
