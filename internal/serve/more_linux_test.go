package serve

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// acceptPair returns the ends of a loopback TCP connection accepted
// through wrap(listener).
func acceptPair(t *testing.T, wrap func(net.Listener) net.Listener) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl := wrap(ln)
	defer wl.Close()
	var aerr error
	var wg sync.WaitGroup
	wg.Go(func() { server, aerr = wl.Accept() })
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if aerr != nil {
		t.Fatal(aerr)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// tcpInfo returns the kernel's TCP state of the socket of rc.
func tcpInfo(t *testing.T, c net.Conn) *unix.TCPInfo {
	t.Helper()
	var info *unix.TCPInfo
	var ierr error
	if err := RawTCP(c).Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return info
}

// answer writes head with Write (after MoreFollows when mark is set) and
// then body from a file with SendFile, as the store answers a large
// image; the client must read exactly head and body. It returns the data
// segments the answer left in, and whether MoreFollows marked server.
func answer(t *testing.T, server, client net.Conn, mark bool) (segs uint32, more bool) {
	t.Helper()
	head := []byte("HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n")
	body := bytes.Repeat([]byte("0123456789abcdef"), 256)
	path := filepath.Join(t.TempDir(), "dat")
	if err := os.WriteFile(path, append([]byte("superblock"), body...), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(head)+len(body))
		n, _ := io.ReadFull(client, b)
		got <- b[:n]
	}()
	before := tcpInfo(t, server).Data_segs_out
	if mark {
		more = MoreFollows(server)
	}
	if n, err := server.Write(head); err != nil || n != len(head) {
		t.Fatalf("Write: %d, %v", n, err)
	}
	held := tcpInfo(t, server).Notsent_bytes
	if more && held != uint32(len(head)) {
		t.Errorf("headers written with MSG_MORE: %d bytes held back, want all %d", held, len(head))
	}
	if !more && held != 0 {
		t.Errorf("headers written plainly: %d bytes held back, want none", held)
	}
	if n, err := SendFile(RawTCP(server), int(f.Fd()), int64(len("superblock")), int64(len(body))); err != nil || n != int64(len(body)) {
		t.Fatalf("SendFile: %d, %v", n, err)
	}
	if b := <-got; !bytes.Equal(b, append(head, body...)) {
		t.Fatalf("the client got %d bytes, not the headers and the body", len(b))
	}
	return tcpInfo(t, server).Data_segs_out - before, more
}

// TestMoreFollows: on a connection of a MoreWrites listener the headers
// marked by MoreFollows wait in the socket and leave in one segment with
// the body sent after them; the next write goes out at once again. On a
// plain connection MoreFollows does nothing and the headers leave in a
// segment of their own.
func TestMoreFollows(t *testing.T) {
	server, client := acceptPair(t, moreListen)
	if segs, more := answer(t, server, client, true); !more || segs != 1 {
		t.Errorf("an answer with MSG_MORE headers (marked %v) left in %d segments, want 1", more, segs)
	}
	// The mark holds for one write: the next answer is written plainly.
	if segs, _ := answer(t, server, client, false); segs != 2 {
		t.Errorf("an answer after the marked one left in %d segments, want 2", segs)
	}
	if segs, more := answer(t, server, client, true); !more || segs != 1 {
		t.Errorf("a second answer with MSG_MORE headers (marked %v) left in %d segments, want 1", more, segs)
	}

	plain, plainClient := acceptPair(t, func(ln net.Listener) net.Listener { return ln })
	if segs, more := answer(t, plain, plainClient, true); more || segs != 2 {
		t.Errorf("a plain connection's answer (marked %v) left in %d segments, want 2", more, segs)
	}
}

// TestMoreFollowsNeverTLS: a TLS connection over a MoreWrites listener is
// never marked (its bytes must be encrypted, and reach the peer whole).
func TestMoreFollowsNeverTLS(t *testing.T) {
	cfg := selfSigned(t)
	server, client := acceptPair(t, func(ln net.Listener) net.Listener {
		return tls.NewListener(moreListen(ln), cfg)
	})
	if MoreFollows(server) {
		t.Fatal("MoreFollows marked a TLS connection")
	}
	if RawTCP(server) != nil {
		t.Fatal("RawTCP gave raw access to a TLS connection")
	}
	// The test trusts whatever the server shows: only the bytes matter.
	tc := tls.Client(client, &tls.Config{InsecureSkipVerify: true})
	go func() { io.WriteString(server, "hello") }()
	b := make([]byte, 5)
	if _, err := io.ReadFull(tc, b); err != nil || string(b) != "hello" {
		t.Fatalf("TLS read %q, %v", b, err)
	}
}

// selfSigned returns a server TLS config with a throwaway self-signed
// certificate.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}
