package dbconnect_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// TestEachServerHasItsOwnTLSName: with several servers and TLS, each
// server's certificate is checked against that server's own name. Two TLS
// servers, each with a certificate for its own name only (from a CA made
// here), stand in front of the test's MySQL: the first is "localhost", the
// second "127.0.0.1". With the first down, connections go to the second and
// work; a second server whose certificate names the first one's host is
// refused, so the check is real.
//
// MySQL's TLS starts inside its protocol (the server's greeting offers it,
// the client asks for it, then the handshake), so each stand-in is a small
// proxy that offers TLS in the real server's greeting, terminates it with
// its certificate and relays the session, plain, to the real server.
func TestEachServerHasItsOwnTLSName(t *testing.T) {
	db := testdb.New(t)
	ca := newTestCA(t)
	first := startTLSProxy(t, db.Cfg.Addr, ca.leaf(t, "localhost"))
	second := startTLSProxy(t, db.Cfg.Addr, ca.leaf(t, "127.0.0.1"))
	misnamed := startTLSProxy(t, db.Cfg.Addr, ca.leaf(t, "localhost"))

	tlsName := "rcvoip-test-" + testdb.RandomID()
	if err := mysql.RegisterTLSConfig(tlsName, &tls.Config{RootCAs: ca.pool}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mysql.DeregisterTLSConfig(tlsName) })
	open := func(servers string) *sql.DB {
		t.Helper()
		cfg, err := dbconnect.ParseDSN(fmt.Sprintf("%s:%s@tcp(%s)/%s?tls=%s", db.Cfg.User, db.Cfg.Passwd, servers, db.Name, tlsName))
		if err != nil {
			t.Fatal(err)
		}
		connector, err := dbconnect.NewConnector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		pool := dbconnect.NewDB(connector)
		pool.SetMaxIdleConns(0) // every query connects anew
		t.Cleanup(func() { pool.Close() })
		return pool
	}
	query := func(pool *sql.DB) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var n int
		return pool.QueryRowContext(ctx, "SELECT COUNT(*) FROM rooms").Scan(&n)
	}

	pool := open(first.addr("localhost") + "," + second.addr("127.0.0.1"))
	if err := query(pool); err != nil {
		t.Fatalf("through the first server: %v", err)
	}
	if first.sessions.Load() != 1 || second.sessions.Load() != 0 {
		t.Fatalf("TLS sessions: first %d, second %d; want 1, 0", first.sessions.Load(), second.sessions.Load())
	}
	first.stop()
	if err := query(pool); err != nil {
		t.Fatalf("through the second server, the first down: %v", err)
	}
	if second.sessions.Load() != 1 {
		t.Fatalf("the second server had %d TLS sessions, want 1 (its handshake: %v)", second.sessions.Load(), second.lastErr())
	}

	pool = open(first.addr("localhost") + "," + misnamed.addr("127.0.0.1"))
	err := query(pool)
	var unknown x509.HostnameError
	if err == nil || !errors.As(err, &unknown) && !strings.Contains(err.Error(), "certificate is valid for localhost, not 127.0.0.1") {
		t.Fatalf("a second server whose certificate is for localhost: %v, want the certificate refused for 127.0.0.1", err)
	}
	if misnamed.sessions.Load() != 0 {
		t.Fatal("a TLS session was set up with a certificate for another name")
	}
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "rocketchat-voip test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leaf is a server certificate for name alone (a DNS name or an IP).
func (ca *testCA) leaf(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsProxy offers TLS in a MySQL server's greeting, terminates it with its
// certificate, and relays the session to the server in plain text,
// renumbering the packets of the login exchange (the client's TLS request
// is one more packet than the server sees).
type tlsProxy struct {
	ln       net.Listener
	target   string
	cert     tls.Certificate
	sessions atomic.Int64 // TLS handshakes that succeeded

	mu  sync.Mutex
	err error // the last handshake's failure
}

const clientSSL = 0x0800 // CLIENT_SSL, a capability flag of the handshake

func startTLSProxy(t *testing.T, target string, cert tls.Certificate) *tlsProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tlsProxy{ln: ln, target: target, cert: cert}
	go p.accept()
	t.Cleanup(p.stop)
	return p
}

// addr is the proxy's address under host, which must reach loopback.
func (p *tlsProxy) addr(host string) string {
	_, port, _ := net.SplitHostPort(p.ln.Addr().String())
	return net.JoinHostPort(host, port)
}

func (p *tlsProxy) stop() { p.ln.Close() }

func (p *tlsProxy) lastErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *tlsProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.relay(c)
	}
}

func (p *tlsProxy) fail(err error) {
	p.mu.Lock()
	p.err = err
	p.mu.Unlock()
}

func (p *tlsProxy) relay(client net.Conn) {
	defer client.Close()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		p.fail(err)
		return
	}
	defer server.Close()
	// The greeting: protocol version, server version (NUL-terminated),
	// connection id (4), scramble (8), filler (1), then the low two bytes
	// of the capability flags.
	seq, greeting, err := readPacket(server)
	if err != nil {
		p.fail(err)
		return
	}
	nul := strings.IndexByte(string(greeting[1:]), 0)
	if nul < 0 {
		p.fail(errors.New("greeting without a server version"))
		return
	}
	caps := 1 + nul + 1 + 4 + 8 + 1
	binary.LittleEndian.PutUint16(greeting[caps:], binary.LittleEndian.Uint16(greeting[caps:])|clientSSL)
	if err := writePacket(client, seq, greeting); err != nil {
		return
	}
	// The client's TLS request is the first 32 bytes of its login packet.
	_, request, err := readPacket(client)
	if err != nil || len(request) != 32 || binary.LittleEndian.Uint32(request)&clientSSL == 0 {
		p.fail(fmt.Errorf("the client did not ask for TLS (%v)", err))
		return
	}
	secure := tls.Server(client, &tls.Config{Certificates: []tls.Certificate{p.cert}})
	secure.SetDeadline(time.Now().Add(10 * time.Second))
	if err := secure.Handshake(); err != nil {
		p.fail(err)
		return
	}
	secure.SetDeadline(time.Time{})
	p.sessions.Add(1)
	// The login packet, seen by the server as the first after its
	// greeting, without the TLS flag.
	seq, login, err := readPacket(secure)
	if err != nil || len(login) < 4 {
		p.fail(fmt.Errorf("login packet: %v", err))
		return
	}
	binary.LittleEndian.PutUint32(login, binary.LittleEndian.Uint32(login)&^clientSSL)
	if err := writePacket(server, seq-1, login); err != nil {
		return
	}
	// The rest of the login (auth switches, more data) is renumbered until
	// the server's OK or error; then every command starts at 0 again and
	// bytes pass as they are.
	var loggedIn atomic.Bool
	go func() {
		defer server.Close()
		for !loggedIn.Load() {
			seq, pkt, err := readPacket(secure)
			if err != nil {
				return
			}
			if !loggedIn.Load() {
				seq--
			}
			if err := writePacket(server, seq, pkt); err != nil {
				return
			}
		}
		io.Copy(server, secure) //nolint:errcheck
	}()
	for {
		seq, pkt, err := readPacket(server)
		if err != nil {
			return
		}
		done := len(pkt) > 0 && (pkt[0] == 0x00 || pkt[0] == 0xff)
		if done {
			loggedIn.Store(true)
		}
		if err := writePacket(secure, seq+1, pkt); err != nil || done {
			break
		}
	}
	io.Copy(secure, server) //nolint:errcheck
}

func readPacket(r io.Reader) (byte, []byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	pkt := make([]byte, int(h[0])|int(h[1])<<8|int(h[2])<<16)
	_, err := io.ReadFull(r, pkt)
	return h[3], pkt, err
}

func writePacket(w io.Writer, seq byte, pkt []byte) error {
	h := []byte{byte(len(pkt)), byte(len(pkt) >> 8), byte(len(pkt) >> 16), seq}
	_, err := w.Write(append(h, pkt...))
	return err
}
