// Package pki owns the cluster's certificates: it creates the cluster CA,
// issues the certificates of nodes and operators, loads them from disk, and
// reads back the identity (role and name) a verified peer certificate names.
//
// # Identity
//
// Every certificate the CA issues names exactly one identity as a URI
// subject alternative name of the form
//
//	haybale://<role>/<name>
//
// where role is one of store, directory, gateway, cache or operator, and
// name is 1 to 64 characters of [A-Za-z0-9._-]. For a store, the name is
// its store ID. Servers read the identity only from that URI (the subject's
// CN = name and OU = role are there for people reading the certificate).
// Every certificate carries both the server and the client extended key
// usage, because every role both serves and calls.
//
// # Files
//
// A CA folder holds ca.crt (the CA certificate, PEM) and ca.key (its
// private key, PKCS #8 PEM, mode 0600). The CA key never leaves the
// operator's machine. Issuing a certificate writes a node folder holding
// ca.crt (a copy of the CA certificate, to verify peers), node.crt and
// node.key (0600): that folder is what a process takes as --certs-dir.
//
// Keys are ECDSA P-256. Nothing in this package logs or prints key
// material.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Role is what a certificate's holder does in the cluster.
type Role string

// The roles of a cluster.
const (
	RoleStore     Role = "store"
	RoleDirectory Role = "directory"
	RoleGateway   Role = "gateway"
	RoleCache     Role = "cache"
	RoleOperator  Role = "operator"
)

// Roles lists every role, in the order the CLI documents them.
var Roles = []Role{RoleStore, RoleDirectory, RoleGateway, RoleCache, RoleOperator}

// ParseRole returns the Role spelled s, or an error naming the valid ones.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("pki: unknown role %q (want store, directory, gateway, cache or operator)", s)
}

// URIScheme is the scheme of the identity URI.
const URIScheme = "haybale"

// MaxNameLen bounds an identity's name.
const MaxNameLen = 64

// Identity is who a certificate speaks for.
type Identity struct {
	Role Role
	Name string
}

// String returns "role/name".
func (id Identity) String() string { return string(id.Role) + "/" + id.Name }

// URI returns the identity's URI SAN, haybale://role/name.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: URIScheme, Host: string(id.Role), Path: "/" + id.Name}
}

// Validate checks the role and the name.
func (id Identity) Validate() error {
	if _, err := ParseRole(string(id.Role)); err != nil {
		return err
	}
	return ValidateName(id.Name)
}

// ValidateName checks a certificate name: 1 to MaxNameLen characters of
// [A-Za-z0-9._-].
func ValidateName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("pki: name %q: want 1 to %d characters", name, MaxNameLen)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("pki: name %q: only letters, digits, '.', '_' and '-' are allowed", name)
		}
	}
	return nil
}

// ErrNoIdentity is returned by IdentityOf for a certificate without exactly
// one valid haybale:// URI.
var ErrNoIdentity = errors.New("pki: certificate names no haybale identity")

// IdentityOf returns the identity cert names in its haybale:// URI SAN. A
// certificate with no such URI, more than one, or a malformed one has none.
// The caller must have verified cert against the cluster CA.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != URIScheme {
			continue
		}
		id := Identity{Role: Role(u.Host), Name: strings.TrimPrefix(u.Path, "/")}
		if u.User != nil || u.RawQuery != "" || u.Fragment != "" || id.Validate() != nil {
			return Identity{}, fmt.Errorf("%w: malformed URI %q", ErrNoIdentity, u.String())
		}
		found = append(found, id)
	}
	if len(found) != 1 {
		return Identity{}, fmt.Errorf("%w (%d haybale URIs)", ErrNoIdentity, len(found))
	}
	return found[0], nil
}

// File names in CA and node folders.
const (
	CACertFile   = "ca.crt"
	CAKeyFile    = "ca.key"
	NodeCertFile = "node.crt"
	NodeKeyFile  = "node.key"
)

// Default lifetimes.
const (
	DefaultCALifetime   = 10 * 365 * 24 * time.Hour
	DefaultCertLifetime = 2 * 365 * 24 * time.Hour
)

// CA is a loaded certificate authority: its certificate and private key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewCA creates a self-signed CA valid for lifetime (DefaultCALifetime when
// 0), with commonName as its subject.
func NewCA(commonName string, lifetime time.Duration) (*CA, error) {
	if lifetime <= 0 {
		lifetime = DefaultCALifetime
	}
	key, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"haybale"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// IssueOptions describe a certificate to issue.
type IssueOptions struct {
	Identity Identity
	// Hosts are the DNS names and IP addresses under which the holder
	// serves; clients check them. Empty for a pure client (operator).
	Hosts []string
	// Lifetime is the validity; DefaultCertLifetime when 0. It is cut to
	// the CA's own expiry.
	Lifetime time.Duration
}

// Issued is a certificate and its key.
type Issued struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Issue signs a new key pair for opts.Identity.
func (ca *CA) Issue(opts IssueOptions) (*Issued, error) {
	if err := opts.Identity.Validate(); err != nil {
		return nil, err
	}
	if opts.Lifetime <= 0 {
		opts.Lifetime = DefaultCertLifetime
	}
	key, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("pki: generate key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(opts.Lifetime)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject: pkix.Name{
			CommonName:         opts.Identity.Name,
			OrganizationalUnit: []string{string(opts.Identity.Role)},
			Organization:       []string{"haybale"},
		},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{opts.Identity.URI()},
	}
	for _, h := range opts.Hosts {
		h = strings.TrimSpace(h)
		switch ip := net.ParseIP(h); {
		case h == "":
		case ip != nil:
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		default:
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Issued{Cert: cert, Key: key}, nil
}

// TLSCertificate returns the issued pair as a tls.Certificate.
func (is *Issued) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{is.Cert.Raw}, PrivateKey: is.Key, Leaf: is.Cert}
}

// Pool returns a pool holding only the CA certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// writeNew writes data to path, failing when path exists, with mode perm.
func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("pki: %s already exists; remove it first to replace it", path)
		}
		return fmt.Errorf("pki: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}

// Save writes the CA into dir (created 0700 when missing) as ca.crt and
// ca.key (0600). It refuses to overwrite an existing file.
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	kp, err := keyPEM(ca.Key)
	if err != nil {
		return err
	}
	if err := writeNew(filepath.Join(dir, CAKeyFile), kp, 0o600); err != nil {
		return err
	}
	if err := writeNew(filepath.Join(dir, CACertFile), certPEM(ca.Cert), 0o644); err != nil {
		os.Remove(filepath.Join(dir, CAKeyFile))
		return err
	}
	return nil
}

// SaveNode writes a node folder into dir (created 0700 when missing):
// ca.crt, node.crt and node.key (0600). It refuses to overwrite an
// existing file.
func (ca *CA) SaveNode(dir string, is *Issued) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	kp, err := keyPEM(is.Key)
	if err != nil {
		return err
	}
	written := []string{}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{NodeKeyFile, kp, 0o600},
		{NodeCertFile, certPEM(is.Cert), 0o644},
		{CACertFile, certPEM(ca.Cert), 0o644},
	} {
		p := filepath.Join(dir, f.name)
		if err := writeNew(p, f.data, f.perm); err != nil {
			for _, w := range written {
				os.Remove(w)
			}
			return err
		}
		written = append(written, p)
	}
	return nil
}

// readPEM returns the DER bytes of the one block of type typ in path.
func readPEM(path, typ string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != typ {
		return nil, fmt.Errorf("pki: %s holds no PEM %s", path, typ)
	}
	return blk.Bytes, nil
}

func loadCert(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	return c, nil
}

func loadKey(path string) (*ecdsa.PrivateKey, error) {
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("pki: %s is readable by others (mode %v); chmod 600 it", path, st.Mode().Perm())
	}
	der, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: malformed private key", path)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("pki: %s: not an ECDSA key", path)
	}
	return ek, nil
}

// LoadCA reads ca.crt and ca.key from dir.
func LoadCA(dir string) (*CA, error) {
	cert, err := loadCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("pki: %s is not a CA certificate", filepath.Join(dir, CACertFile))
	}
	key, err := loadKey(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: %s does not match %s", CAKeyFile, CACertFile)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Node is what a process needs for mutual TLS: the CA that vouches for
// peers, its own certificate chain, and the identity that certificate
// names.
type Node struct {
	Roots    *x509.CertPool
	Cert     tls.Certificate
	Identity Identity
}

// LoadNode reads a node folder (ca.crt, node.crt, node.key), checks that
// the certificate is signed by the CA, matches the key and names an
// identity, and returns it.
func LoadNode(dir string) (*Node, error) {
	caCert, err := loadCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	cert, err := loadCert(filepath.Join(dir, NodeCertFile))
	if err != nil {
		return nil, err
	}
	key, err := loadKey(filepath.Join(dir, NodeKeyFile))
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: %s does not match %s", NodeKeyFile, NodeCertFile)
	}
	return nodeFrom(caCert, cert, key)
}

func nodeFrom(caCert, cert *x509.Certificate, key *ecdsa.PrivateKey) (*Node, error) {
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("pki: %s does not verify against %s: %w", NodeCertFile, CACertFile, err)
	}
	id, err := IdentityOf(cert)
	if err != nil {
		return nil, err
	}
	return &Node{
		Roots:    roots,
		Cert:     tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert},
		Identity: id,
	}, nil
}

// Node returns the issued pair as a Node of this CA, for processes that
// hold their CA in memory (tests, `haybale server`).
func (ca *CA) Node(is *Issued) (*Node, error) {
	return nodeFrom(ca.Cert, is.Cert, is.Key)
}

// PeerIdentity returns the identity of the peer of a TLS connection whose
// client certificate was verified (tls.RequireAndVerifyClientCert), read
// from the leaf of its first verified chain.
func PeerIdentity(cs *tls.ConnectionState) (Identity, error) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, fmt.Errorf("%w: no verified client certificate", ErrNoIdentity)
	}
	return IdentityOf(cs.VerifiedChains[0][0])
}

// ServerTLS returns the TLS configuration of a server that requires a
// client certificate from the cluster CA. TLS 1.3 only.
func (n *Node) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{n.Cert},
		ClientCAs:    n.Roots,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
}

// ServerTLSRequiring is ServerTLS that also requires the client's
// certificate to name one of roles: a directory's raft listener admits
// only directories. With no roles it is ServerTLS.
func (n *Node) ServerTLSRequiring(roles ...Role) *tls.Config {
	cfg := n.ServerTLS()
	if len(roles) > 0 {
		cfg.VerifyConnection = requireRole("client", roles)
	}
	return cfg
}

// requireRole returns a VerifyConnection hook that accepts a peer whose
// verified certificate names one of roles; side names the peer ("client"
// or "server") in the error.
func requireRole(side string, roles []Role) func(tls.ConnectionState) error {
	want := append([]Role(nil), roles...)
	return func(cs tls.ConnectionState) error {
		id, err := PeerIdentity(&cs)
		if err != nil {
			return err
		}
		for _, r := range want {
			if id.Role == r {
				return nil
			}
		}
		if side == "server" {
			return fmt.Errorf("pki: server %s is a %s, want %v", cs.ServerName, id, want)
		}
		return fmt.Errorf("pki: client %s may not connect here (want %v)", id, want)
	}
}

// ClientTLS returns the TLS configuration of a client presenting n's
// certificate and trusting only the cluster CA. The server's name is
// checked against its certificate's hosts as usual.
func (n *Node) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{n.Cert},
		RootCAs:      n.Roots,
	}
}

// ClientTLSExpecting is ClientTLS that also requires the server's
// certificate to name one of roles: a client dialing a store refuses a
// server that is not a store of this cluster.
func (n *Node) ClientTLSExpecting(roles ...Role) *tls.Config {
	cfg := n.ClientTLS()
	if len(roles) > 0 {
		cfg.VerifyConnection = requireRole("server", roles)
	}
	return cfg
}
