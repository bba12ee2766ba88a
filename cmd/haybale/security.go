package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/spf13/pflag"

	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/internal/token"
	"github.com/haybale/haybale/store"
)

// tlsFlags choose how a process joins the internal plane: mutual TLS with
// the node folder of --certs-dir, or, explicitly, --insecure.
type tlsFlags struct {
	certsDir string
	insecure bool
}

func (f *tlsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.certsDir, "certs-dir", "", "node folder from `haybale cert issue` (ca.crt, node.crt, node.key): every internal call uses mutual TLS with this certificate")
	fs.BoolVar(&f.insecure, "insecure", false, "run the internal plane without TLS or authentication: anyone who reaches the internal ports can read, change or delete every photo (tests and throw-away clusters only)")
}

// errNoTLS is the refusal of a cluster role started without TLS material.
var errNoTLS = errors.New("no TLS material: give --certs-dir with a node folder from `haybale cert issue`, or --insecure to run an unauthenticated cluster")

// credentials returns the process's credentials for role. With
// --insecure it logs a warning and returns insecure credentials; without
// --certs-dir it refuses.
func (f *tlsFlags) credentials(role pki.Role, logger *slog.Logger) (*rpc.Credentials, error) {
	switch {
	case f.insecure && f.certsDir != "":
		return nil, errors.New("--insecure and --certs-dir exclude each other")
	case f.insecure:
		logger.Warn("running --insecure: internal calls are neither encrypted nor authenticated; anyone who reaches the internal ports can take the cluster over", "role", role)
		return rpc.Insecure(), nil
	case f.certsDir == "":
		return nil, errNoTLS
	}
	node, err := pki.LoadNode(f.certsDir)
	if err != nil {
		return nil, fmt.Errorf("--certs-dir: %w", err)
	}
	if node.Identity.Role != role {
		return nil, fmt.Errorf("--certs-dir %s holds a certificate for %s; this command needs a %s certificate", f.certsDir, node.Identity, role)
	}
	logger.Info("internal plane secured with mutual TLS", "identity", node.Identity.String(), "expires", node.Cert.Leaf.NotAfter.Format(time.DateOnly))
	return rpc.TLS(node), nil
}

// operatorTLSFlags are tlsFlags for operator tools, which run as the
// operator role.
type operatorTLSFlags struct{ tlsFlags }

func (f *operatorTLSFlags) credentials() (*rpc.Credentials, error) {
	return f.tlsFlags.credentials(pki.RoleOperator, slog.New(slog.DiscardHandler))
}

// httpClientTLS returns the TLS configuration of an HTTP client calling
// an internal listener of a server of role want, nil on the insecure
// plane.
func httpClientTLS(creds *rpc.Credentials, want pki.Role) *tls.Config {
	if n := creds.Node(); n != nil {
		return n.ClientTLSExpecting(want)
	}
	return nil
}

// internalHTTPClient returns an HTTP client for internal listeners of role
// want: mutual TLS on a TLS plane.
func internalHTTPClient(creds *rpc.Credentials, want pki.Role) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = httpClientTLS(creds, want)
	return &http.Client{Transport: tr}
}

// internalScheme is the URL scheme of internal HTTP listeners.
func internalScheme(creds *rpc.Credentials) string {
	if creds.IsInsecure() {
		return "http"
	}
	return "https"
}

// storeAuthorizer returns the store's token checker for the cluster
// secret in file.
func storeAuthorizer(file string) (store.WriteAuthorizer, error) {
	secret, err := token.LoadSecret(file)
	if err != nil {
		return nil, err
	}
	signer, err := token.NewSigner(secret)
	if err != nil {
		return nil, err
	}
	return signer, nil
}
