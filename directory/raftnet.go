package directory

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/haybale/haybale/internal/pki"
)

// raftHandshakeTimeout bounds the TLS handshake of a raft connection, both
// ways, so a peer that connects and says nothing holds no goroutine.
const raftHandshakeTimeout = 10 * time.Second

// tlsStreamLayer is raft's network layer over mutual TLS from the cluster
// CA. The listener admits only a client whose certificate is a directory
// of this cluster; dialing presents this node's certificate and accepts
// only a server whose certificate is a directory of this cluster, valid
// for the host dialed. A peer refused by either check never reaches raft:
// no vote, entry or snapshot of it is read.
//
// Who may call: directory nodes of the cluster only (certificate role
// directory).
type tlsStreamLayer struct {
	ln     net.Listener // plain TCP; the handshake runs on first use of an accepted conn
	addr   net.Addr     // the address other nodes dial
	server *tls.Config
	client *tls.Config
	logger *slog.Logger
}

// newTLSStreamLayer listens on bind for raft over mutual TLS with node's
// certificate, both sides restricted to the directory role.
func newTLSStreamLayer(bind string, node *pki.Node, logger *slog.Logger) (*tlsStreamLayer, error) {
	if node == nil {
		return nil, errors.New("directory: raft over TLS needs this node's certificate")
	}
	return listenTLSStreamLayer(bind, node.ServerTLSRequiring(pki.RoleDirectory), node.ClientTLSExpecting(pki.RoleDirectory), logger)
}

// listenTLSStreamLayer listens on bind with explicit TLS configurations.
// The bound address must be one other nodes can dial (not a wildcard), as
// with raft's TCP transport.
func listenTLSStreamLayer(bind string, server, client *tls.Config, logger *slog.Logger) (*tlsStreamLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	addr, ok := ln.Addr().(*net.TCPAddr)
	if !ok || addr.IP == nil || addr.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("raft address %s is not one other nodes can dial; give a host or IP, not a wildcard", bind)
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &tlsStreamLayer{ln: ln, addr: addr, server: server, client: client, logger: logger}, nil
}

// Accept implements net.Listener. It does not wait for the handshake,
// which runs (bounded by raftHandshakeTimeout) on the first read or write
// of the connection, in raft's goroutine for that connection, so a slow
// or hostile peer cannot stall the accept loop.
func (s *tlsStreamLayer) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	return &handshakeConn{Conn: tls.Server(c, s.server), logger: s.logger}, nil
}

// Close implements net.Listener.
func (s *tlsStreamLayer) Close() error { return s.ln.Close() }

// Addr implements net.Listener: the address other nodes dial.
func (s *tlsStreamLayer) Addr() net.Addr { return s.addr }

// Dial implements raft.StreamLayer: a TLS connection to a directory node,
// handshake done, within timeout.
func (s *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmpDur(timeout, raftHandshakeTimeout))
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: s.client}
	c, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft peer %s: %w", address, err)
	}
	return c, nil
}

// handshakeConn is an accepted raft connection whose TLS handshake runs
// once, with a deadline, before its first read or write.
type handshakeConn struct {
	*tls.Conn
	logger *slog.Logger
	once   sync.Once
	err    error
}

func (c *handshakeConn) handshake() error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), raftHandshakeTimeout)
		defer cancel()
		if c.err = c.Conn.HandshakeContext(ctx); c.err != nil {
			c.logger.Warn("raft connection refused", "peer", c.RemoteAddr().String(), "err", c.err)
			c.Conn.Close()
		}
	})
	return c.err
}

func (c *handshakeConn) Read(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *handshakeConn) Write(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}
