package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
