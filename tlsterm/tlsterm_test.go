package tlsterm

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTerm(t testing.TB, tc config.TLS) *Terminator {
	t.Helper()
	tc = (&config.Config{TLS: tc}).WithDefaults().TLS
	term, err := New(Options{TLS: tc, DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { term.Close() })
	return term
}

func clientFor(t testing.TB, term *Terminator, maxVersion uint16) *tls.Config {
	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(term.certs.Load().dev.Certificate[0])
	pool.AddCert(leaf)
	return &tls.Config{RootCAs: pool, ServerName: "localhost", MaxVersion: maxVersion, ClientSessionCache: tls.NewLRUClientSessionCache(8)}
}

// handshake runs one handshake over a pipe and reports resumption. The
// client reads once so that TLS 1.3 tickets (sent after the handshake)
// reach its cache.
func handshake(t testing.TB, server *tls.Config, client *tls.Config) bool {
	t.Helper()
	c1, c2 := net.Pipe()
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(c1, server)
		err := s.Handshake()
		if err == nil {
			_, err = s.Write([]byte("x"))
		}
		errc <- err
		c1.Close() // not s.Close: a close_notify on an unbuffered pipe waits for a reader
	}()
	c := tls.Client(c2, client)
	if err := c.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	buf := make([]byte, 1)
	if _, err := c.Read(buf); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server: %v", err)
	}
	resumed := c.ConnectionState().DidResume
	c2.Close()
	return resumed
}

func TestResumptionBothVersions(t *testing.T) {
	term := newTerm(t, config.TLS{})
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		cl := clientFor(t, term, v)
		if handshake(t, term.TLSConfig(), cl) {
			t.Errorf("%s: first handshake resumed", tls.VersionName(v))
		}
		if !handshake(t, term.TLSConfig(), cl) {
			t.Errorf("%s: second handshake did not resume", tls.VersionName(v))
		}
	}
}

// TestTicketRotation: a ticket resumes for the whole 7 days TLS 1.3
// advertises, although keep is 2: a ticket issued just before a rotation
// still resumes just before its lifetime ends, its key kept.
func TestTicketRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		term := newTerm(t, config.TLS{SessionTickets: config.SessionTickets{Rotate: config.Duration(12 * time.Hour), Keep: 2}})
		cl := clientFor(t, term, 0)
		time.Sleep(12*time.Hour - time.Second) // the first key's last second
		handshake(t, term.TLSConfig(), cl)
		time.Sleep(7*24*time.Hour - time.Minute)
		synctest.Wait()
		if !handshake(t, term.TLSConfig(), cl) {
			t.Error("ticket did not resume within its advertised 7-day lifetime")
		}
		if n := len(term.tickets.keys); n != 15 {
			t.Errorf("keys kept = %d, want 15 (1 + 7d/12h)", n)
		}
		term.Close()
	})
}

func TestKeptKeysCoverLifetime(t *testing.T) {
	for _, tc := range []struct {
		rotate time.Duration
		keep   int
		want   int
	}{{12 * time.Hour, 3, 15}, {6 * time.Hour, 3, 29}, {24 * time.Hour, 20, 20}, {7 * 24 * time.Hour, 1, 2}, {time.Minute, 3, 32}} {
		if got := keptKeys(tc.rotate, tc.keep); got != tc.want {
			t.Errorf("keptKeys(%s, %d) = %d, want %d", tc.rotate, tc.keep, got, tc.want)
		}
	}
}

func newTermIn(t testing.TB, tc config.TLS, dir string) *Terminator {
	t.Helper()
	tc = (&config.Config{TLS: tc}).WithDefaults().TLS
	term, err := New(Options{TLS: tc, DataDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	return term
}

// TestTicketKeysSurviveRestart: generated keys are kept in the data dir
// (0600), rotation persists them, and a new Terminator on the same dir
// resumes tickets issued before; stale keys are not loaded.
func TestTicketKeysSurviveRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		a := newTermIn(t, config.TLS{}, dir)
		early := clientFor(t, a, 0)
		handshake(t, a.TLSConfig(), early)
		time.Sleep(12*time.Hour + time.Second) // one rotation, persisted
		synctest.Wait()
		late := clientFor(t, a, 0)
		handshake(t, a.TLSConfig(), late)
		a.Close()
		fi, err := os.Stat(filepath.Join(dir, keptFileName))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("kept keys file: %v %v, want mode 0600", fi, err)
		}

		b := newTermIn(t, config.TLS{}, dir)
		if n := len(b.tickets.keys); n != 2 {
			t.Errorf("keys after restart = %d, want the 2 kept", n)
		}
		if !handshake(t, b.TLSConfig(), early) || !handshake(t, b.TLSConfig(), late) {
			t.Error("tickets issued before the restart did not resume after it")
		}
		b.Close()

		// Stale keys (older than the retention) are dropped at start.
		time.Sleep(8 * 24 * time.Hour)
		c := newTermIn(t, config.TLS{}, dir)
		if n := len(c.tickets.keys); n != 1 {
			t.Errorf("keys after a long stop = %d, want 1 new", n)
		}
		c.Close()
	})
}

func FuzzParseKept(f *testing.F) {
	f.Add([]byte("# c\n" + strings.Repeat("ab", 32) + " 2026-01-02T03:04:05Z\n"))
	f.Add([]byte(strings.Repeat("ab", 32) + " 2026-01-02T03:04:05Z\n" + strings.Repeat("cd", 32) + " 2026-01-01T00:00:00Z\n"))
	f.Add([]byte("zz nope\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, created, err := parseKept(data)
		if err != nil {
			return
		}
		if len(keys) != len(created) || len(keys) > maxKeys {
			t.Fatalf("%d keys, %d times", len(keys), len(created))
		}
		// What parses formats back to the same keys.
		k2, c2, err := parseKept(formatKept(keys, created))
		if err != nil || len(k2) != len(keys) {
			t.Fatalf("round trip: %v", err)
		}
		for i := range keys {
			if k2[i] != keys[i] || !c2[i].Equal(created[i].Truncate(time.Second)) {
				t.Fatalf("round trip key %d differs", i)
			}
		}
	})
}

func TestKeyFileSharedAndReload(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "keys")
	k1, k2, k3 := strings.Repeat("11", 32), strings.Repeat("22", 32), strings.Repeat("33", 32)
	os.WriteFile(f, []byte("# shared by replicas\n"+k1+"\n"), 0o600)
	a := newTerm(t, config.TLS{SessionTickets: config.SessionTickets{KeyFile: f}})
	b := newTerm(t, config.TLS{SessionTickets: config.SessionTickets{KeyFile: f}})
	// The self-signed certificates differ per data dir; trust both.
	cl := clientFor(t, a, 0)
	leafB, _ := x509.ParseCertificate(b.certs.Load().dev.Certificate[0])
	cl.RootCAs.AddCert(leafB)
	handshake(t, a.TLSConfig(), cl)
	if !handshake(t, b.TLSConfig(), cl) {
		t.Fatal("replica b did not resume a ticket issued by replica a")
	}
	other := clientFor(t, a, 0)
	handshake(t, a.TLSConfig(), other) // ticket under k1
	os.WriteFile(f, []byte(k2+"\n"+k1+"\n"), 0o600)
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	keep := clientFor(t, a, 0)
	keep.ClientSessionCache = cl.ClientSessionCache
	if !handshake(t, a.TLSConfig(), other) {
		t.Error("ticket under k1 (still kept) did not resume")
	}
	fresh := clientFor(t, a, 0)
	handshake(t, a.TLSConfig(), fresh) // ticket under k2
	os.WriteFile(f, []byte(k3+"\n"+k2+"\n"), 0o600)
	a.Reload()
	late := clientFor(t, a, 0)
	handshake(t, a.TLSConfig(), late) // ticket under k3
	os.WriteFile(f, []byte("not hex\n"), 0o600)
	if err := a.Reload(); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad key file reload: %v, want an error naming line 1", err)
	}
	if !handshake(t, a.TLSConfig(), fresh) {
		t.Error("after a failed reload the previous keys must stay")
	}
}

func TestParseKeyFile(t *testing.T) {
	for _, tc := range []struct{ in, err string }{
		{strings.Repeat("ab", 32), ""},
		{"\n# c\n" + strings.Repeat("ab", 32) + "\n" + strings.Repeat("cd", 32), ""},
		{"", "no keys"},
		{strings.Repeat("ab", 31), "line 1"},
		{"zz" + strings.Repeat("ab", 31), "line 1"},
		{strings.Repeat(strings.Repeat("ab", 32)+"\n", 33), "more than 32"},
	} {
		_, err := parseKeyFile([]byte(tc.in))
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: err %v, want %q", tc.in, err, tc.err)
		}
	}
}

func FuzzParseKeyFile(f *testing.F) {
	f.Add([]byte(strings.Repeat("ab", 32)))
	f.Add([]byte("# x\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := parseKeyFile(data)
		if err == nil && (len(keys) == 0 || len(keys) > 32) {
			t.Fatalf("%d keys accepted", len(keys))
		}
	})
}

func TestSelfSignedPersists(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	hosts := []string{"localhost", "127.0.0.1"}
	a, err := selfSigned(dir, hosts, log)
	if err != nil {
		t.Fatal(err)
	}
	b, err := selfSigned(dir, hosts, log)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Certificate[0]) != string(b.Certificate[0]) {
		t.Error("restart made a new self-signed certificate")
	}
	leaf, _ := x509.ParseCertificate(a.Certificate[0])
	if leaf.PublicKeyAlgorithm != x509.ECDSA || leaf.VerifyHostname("localhost") != nil || leaf.VerifyHostname("127.0.0.1") != nil {
		t.Errorf("self-signed cert: %v %v", leaf.PublicKeyAlgorithm, leaf.DNSNames)
	}
}

// BenchmarkHandshake compares full and resumed handshakes, TLS 1.2 and 1.3,
// server and client over an in-memory pipe.
func BenchmarkHandshake(b *testing.B) {
	term := newTerm(b, config.TLS{})
	for _, v := range []struct {
		name string
		ver  uint16
	}{{"TLS12", tls.VersionTLS12}, {"TLS13", tls.VersionTLS13}} {
		b.Run("Full/"+v.name, func(b *testing.B) {
			cl := clientFor(b, term, v.ver)
			cl.ClientSessionCache = nil
			for b.Loop() {
				handshake(b, term.TLSConfig(), cl)
			}
		})
		b.Run("Resumed/"+v.name, func(b *testing.B) {
			cl := clientFor(b, term, v.ver)
			handshake(b, term.TLSConfig(), cl)
			for b.Loop() {
				if !handshake(b, term.TLSConfig(), cl) {
					b.Fatal("not resumed")
				}
			}
		})
	}
}

// BenchmarkKeyExchange is the server's share of a TLS 1.3 handshake's key
// exchange (a fresh key pair and the shared secret) in Go's crypto/ecdh:
// every TLS 1.3 resumption pays it, since clients offer only psk_dhe_ke.
// Compare with `openssl speed ecdhx25519 ecdhp256` for nginx and HAProxy.
func BenchmarkKeyExchange(b *testing.B) {
	for _, c := range []struct {
		name  string
		curve ecdh.Curve
	}{{"X25519", ecdh.X25519()}, {"P256", ecdh.P256()}} {
		b.Run(c.name, func(b *testing.B) {
			peer, err := c.curve.GenerateKey(rand.Reader)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				k, err := c.curve.GenerateKey(rand.Reader)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := k.ECDH(peer.PublicKey()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestTicketKeysUnwritableStillStart: a data dir where the keys cannot be
// kept costs resumption across restarts only: tickets still work.
func TestTicketKeysUnwritableStillStart(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, keptFileName), 0o700); err != nil { // in the way of the file
		t.Fatal(err)
	}
	term := newTermIn(t, config.TLS{}, dir)
	defer term.Close()
	cl := clientFor(t, term, 0)
	handshake(t, term.TLSConfig(), cl)
	if !handshake(t, term.TLSConfig(), cl) {
		t.Error("no resumption with keys that could not be kept")
	}
}
