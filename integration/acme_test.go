package integration

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// Pebble is a real ACME server (Let's Encrypt's test CA) on loopback. It
// validates HTTP-01 on HTTPPort and TLS-ALPN-01 on TLSPort of the name
// being validated ("localhost" resolves to 127.0.0.1).
type Pebble struct {
	t        testing.TB
	DirURL   string
	mgmt     string
	CARoot   string // PEM file trusting pebble's own HTTPS listeners
	HTTPPort int
	TLSPort  int
	https    *http.Client
	logs     *logBuffer
}

func startPebble(t testing.TB, httpPort, tlsPort int) *Pebble {
	t.Helper()
	bin := requireTool(t, "pebble")
	ca := newTestCA(t)
	certFile, keyFile := ca.serverFiles(t)
	dir := t.TempDir()
	api, mgmt := freePort(t), freePort(t)
	conf := fmt.Sprintf(`{"pebble": {
  "listenAddress": "127.0.0.1:%d",
  "managementListenAddress": "127.0.0.1:%d",
  "certificate": %q, "privateKey": %q,
  "httpPort": %d, "tlsPort": %d,
  "ocspResponderURL": "", "externalAccountBindingRequired": false
}}`, api, mgmt, certFile, keyFile, httpPort, tlsPort)
	path := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &Pebble{t: t, DirURL: fmt.Sprintf("https://127.0.0.1:%d/dir", api), mgmt: fmt.Sprintf("https://127.0.0.1:%d", mgmt),
		CARoot: ca.File, HTTPPort: httpPort, TLSPort: tlsPort, logs: newLogBuffer()}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	p.https = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	cmd := exec.Command(bin, "-config", path, "-strict=false")
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	out, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.logs.consume(out, nil); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		<-done
		if t.Failed() {
			t.Logf("pebble output:\n%s", p.logs.String())
		}
	})
	waitTCP(t, fmt.Sprintf("127.0.0.1:%d", api), 10*time.Second)
	waitTCP(t, fmt.Sprintf("127.0.0.1:%d", mgmt), 10*time.Second)
	return p
}

// Roots is a pool of pebble's issuing root, which clients of edgeshim
// trust to verify the certificates pebble issued.
func (p *Pebble) Roots() *x509.CertPool {
	p.t.Helper()
	resp, err := p.https.Get(p.mgmt + "/roots/0")
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	pem, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		p.t.Fatalf("pebble root: no PEM in %q", pem)
	}
	return pool
}

// acmeConfig is an edgeshim configuration obtaining certificates from p.
func acmeConfig(p *Pebble, https, http int, storage, acmeExtra string) string {
	listenHTTP := ""
	if http != 0 {
		listenHTTP = fmt.Sprintf(", http: \"127.0.0.1:%d\"", http)
	}
	return fmt.Sprintf(`
listen: {https: "127.0.0.1:%d", admin: "127.0.0.1:0"%s}
tls:
  acme:
    email: ops@example.com
    ca: %s
    ca_root: %s
    storage: %s
%s
`, https, listenHTTP, p.DirURL, p.CARoot, storage, acmeExtra)
}

var obtainedRe = regexp.MustCompile(`msg="acme certificate obtained".* domain=localhost`)

// verified is a client config for name trusting roots.
func verified(name string, roots *x509.CertPool) *tls.Config {
	return &tls.Config{ServerName: name, RootCAs: roots}
}

// leafFor completes a handshake with cfg and returns the server's leaf.
func leafFor(t testing.TB, addr string, cfg *tls.Config) (*x509.Certificate, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// awaitLeaf retries verified handshakes until edgeshim serves a
// certificate for name that roots trust: the order, and then caching the
// certificate in memory, run in the background.
func awaitLeaf(t testing.TB, addr string, cfg *tls.Config, within time.Duration) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		leaf, err := leafFor(t, addr, cfg)
		if err == nil {
			return leaf
		}
		if time.Now().After(deadline) {
			t.Fatalf("no certificate for %s trusted by the CA within %s: %v", cfg.ServerName, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestACMEHTTP01 obtains a certificate through HTTP-01 on listen.http, and
// a client trusting pebble's root completes a handshake for it; then a
// restart with the same storage serves the cached certificate without a
// new order. listen.http redirects everything else to HTTPS with 308.
func TestACMEHTTP01(t *testing.T) {
	httpPort, httpsPort := freePort(t), freePort(t)
	p := startPebble(t, httpPort, freePort(t))
	storage := t.TempDir()
	cfg := acmeConfig(p, httpsPort, httpPort, storage, `    domains: [localhost]
    challenges: [http-01]`)
	e := startEdgeshim(t, cfg, EdgeOptions{Listeners: []string{"https", "http", "admin"}})
	e.Logs.waitLine(t, obtainedRe, 60*time.Second)
	leaf := awaitLeaf(t, e.Addr("https"), verified("localhost", p.Roots()), 10*time.Second)
	if got := e.Metric("edgeshim_acme_orders_total", `result="ok"`); got != 1 {
		t.Errorf("orders ok = %v, want 1", got)
	}
	// Session tickets work with the ACME certificate.
	resume := &tls.Config{ServerName: "localhost", RootCAs: p.Roots(), ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	for i := range 2 {
		c, err := tls.Dial("tcp", e.Addr("https"), resume)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET / HTTP/1.0\r\n\r\n")) // TLS 1.3 tickets arrive after the handshake
		io.Copy(io.Discard, c)
		if got := c.ConnectionState().DidResume; got != (i == 1) {
			t.Errorf("handshake %d: resumed = %v", i, got)
		}
		c.Close()
	}
	if got := e.Metric("edgeshim_acme_certificates"); got != 1 {
		t.Errorf("edgeshim_acme_certificates = %v, want 1", got)
	}
	if exp := e.Metric("edgeshim_acme_certificate_expiry_seconds", `name="localhost"`); exp < 3600 {
		t.Errorf("expiry seconds = %v, want the certificate's remaining lifetime", exp)
	}

	// Plain HTTP: redirected to the HTTPS port, path and query kept.
	cl := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Post(fmt.Sprintf("http://localhost:%d/poll/x?a=1", httpPort), "text/plain", bytes.NewReader([]byte("hi")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if want := fmt.Sprintf("https://localhost:%d/poll/x?a=1", httpsPort); resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
		t.Errorf("plain HTTP: %d Location %q, want 308 %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}

	// Restart on the same storage: the certificate comes from storage.
	if err := e.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	e2 := startEdgeshim(t, cfg, EdgeOptions{Listeners: []string{"https", "http", "admin"}})
	leaf2 := awaitLeaf(t, e2.Addr("https"), verified("localhost", p.Roots()), 30*time.Second) // loaded from storage in the background
	if !leaf2.Equal(leaf) {
		t.Errorf("after restart a different certificate (serial %v, was %v): want the stored one", leaf2.SerialNumber, leaf.SerialNumber)
	}
	if got := e2.Metric("edgeshim_acme_orders_total"); got != 0 {
		t.Errorf("orders after restart = %v, want 0", got)
	}
}

// TestACMETLSALPN01 obtains a certificate through TLS-ALPN-01 on the HTTPS
// listener, with client certificates required for everything else.
func TestACMETLSALPN01(t *testing.T) {
	httpsPort := freePort(t)
	p := startPebble(t, freePort(t), httpsPort)
	devices := newTestCA(t)
	e := startEdgeshim(t, acmeConfig(p, httpsPort, 0, t.TempDir(), `    domains: [localhost]
    challenges: [tls-alpn-01]
  client_auth: {ca: `+devices.File+`, mode: require}`))
	e.Logs.waitLine(t, obtainedRe, 60*time.Second)
	cfg := verified("localhost", p.Roots())
	cfg.Certificates = []tls.Certificate{devices.client(t, "device-1")}
	leaf := awaitLeaf(t, e.Addr("https"), cfg, 10*time.Second)
	if got := leaf.DNSNames; len(got) != 1 || got[0] != "localhost" {
		t.Errorf("certificate names %v, want [localhost]", got)
	}
}

// TestACMEClusterSharedStorage runs two instances on one storage: exactly
// one order is made for the name and both serve the same certificate.
// HTTP-01 reaches only the first instance's listen.http; it answers a
// challenge the other may have started, from the shared storage.
func TestACMEClusterSharedStorage(t *testing.T) {
	httpPort := freePort(t)
	p := startPebble(t, httpPort, freePort(t))
	storage := t.TempDir()
	extra := `    domains: [localhost]
    challenges: [http-01]`
	a := startEdgeshim(t, acmeConfig(p, freePort(t), httpPort, storage, extra), EdgeOptions{Listeners: []string{"https", "http", "admin"}})
	b := startEdgeshim(t, acmeConfig(p, freePort(t), freePort(t), storage, extra), EdgeOptions{Listeners: []string{"https", "http", "admin"}})
	roots := p.Roots()
	var leaves [2]*x509.Certificate
	for i, e := range []*Edge{a, b} {
		leaves[i] = awaitLeaf(t, e.Addr("https"), verified("localhost", roots), 60*time.Second) // the cluster's one order
	}
	if !leaves[0].Equal(leaves[1]) {
		t.Errorf("instances serve different certificates (serials %v, %v): want one order", leaves[0].SerialNumber, leaves[1].SerialNumber)
	}
	ok := a.Metric("edgeshim_acme_orders_total", `result="ok"`) + b.Metric("edgeshim_acme_orders_total", `result="ok"`)
	failed := a.Metric("edgeshim_acme_orders_total", `result="error"`) + b.Metric("edgeshim_acme_orders_total", `result="error"`)
	if ok != 1 || failed != 0 {
		t.Errorf("orders across the cluster: %v ok, %v failed; want exactly 1 ok", ok, failed)
	}
}

// TestACMEOnDemand obtains a certificate at the first handshake for an
// allowed name; a name not allowed fails its handshake and orders nothing.
func TestACMEOnDemand(t *testing.T) {
	httpsPort := freePort(t)
	p := startPebble(t, freePort(t), httpsPort)
	e := startEdgeshim(t, acmeConfig(p, httpsPort, 0, t.TempDir(), `    challenges: [tls-alpn-01]
    on_demand: {allow: ["localhost", "device-*.fleet.example"]}`))
	roots := p.Roots()
	if _, err := leafFor(t, e.Addr("https"), verified("not-allowed.example.com", roots)); err == nil {
		t.Error("handshake for a name not allowed succeeded")
	}
	leaf, err := leafFor(t, e.Addr("https"), verified("localhost", roots))
	if err != nil {
		t.Fatalf("on-demand handshake for an allowed name: %v", err)
	}
	if leaf.DNSNames[0] != "localhost" {
		t.Errorf("names %v", leaf.DNSNames)
	}
	if got := e.Metric("edgeshim_acme_orders_total", `result="ok"`); got != 1 {
		t.Errorf("orders ok = %v, want 1", got)
	}
	if got := e.Metric("edgeshim_acme_orders_total", `result="error"`); got != 0 {
		t.Errorf("orders failed = %v, want 0 (no order for a refused name)", got)
	}
	if bytes.Contains([]byte(e.Logs.String()), []byte(`identifier=not-allowed.example.com`)) {
		t.Error("certmagic worked on the refused name")
	}
	// The second handshake is served from memory, no new order.
	if _, err := leafFor(t, e.Addr("https"), verified("localhost", roots)); err != nil {
		t.Fatal(err)
	}
	if got := e.Metric("edgeshim_acme_orders_total"); got != 1 {
		t.Errorf("orders = %v after a second handshake, want 1", got)
	}
}

// TestACMECAUnreachable starts with a CA that does not answer: edgeshim
// serves its self-signed names and logs the failure with the domain.
func TestACMECAUnreachable(t *testing.T) {
	httpsPort := freePort(t)
	dead := freePort(t) // nothing listens there
	e := startEdgeshim(t, fmt.Sprintf(`
listen: {https: "127.0.0.1:%d", admin: "127.0.0.1:0"}
tls:
  acme:
    domains: [localhost]
    ca: https://127.0.0.1:%d/dir
    challenges: [tls-alpn-01]
`, httpsPort, dead))
	e.Logs.waitLine(t, regexp.MustCompile(`acme certificate failed.*domain=localhost.*err=.*`+strconv.Itoa(dead)), 60*time.Second)
	resp, err := e.Client().Get(e.URL("/"))
	if err != nil {
		t.Fatalf("self-signed name not served while the CA is unreachable: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("status %d, want 404 (no routes)", resp.StatusCode)
	}
	if got := e.Metric("edgeshim_acme_orders_total", `result="error"`); got < 1 {
		t.Errorf("orders failed = %v, want ≥ 1", got)
	}
}

// TestACMEStaticFilesWin: a certificate file wins for its names beside
// ACME, which still obtains and holds its certificate.
func TestACMEStaticFilesWin(t *testing.T) {
	httpPort := freePort(t)
	p := startPebble(t, httpPort, freePort(t))
	static := newTestCA(t)
	cert, key := static.serverFiles(t) // localhost, 127.0.0.1
	e := startEdgeshim(t, acmeConfig(p, freePort(t), httpPort, t.TempDir(), `    domains: [localhost]
    challenges: [http-01]
  certs: [{cert: `+cert+`, key: `+key+`}]`), EdgeOptions{Listeners: []string{"https", "http", "admin"}})
	e.Logs.waitLine(t, obtainedRe, 60*time.Second)
	e.WaitMetric("edgeshim_acme_certificates", 1, 10*time.Second)
	pool := x509.NewCertPool()
	pool.AddCert(static.cert)
	if _, err := leafFor(t, e.Addr("https"), verified("localhost", pool)); err != nil {
		t.Errorf("localhost not served from the certificate file: %v", err)
	}
	if _, err := leafFor(t, e.Addr("https"), verified("localhost", p.Roots())); err == nil {
		t.Error("the ACME certificate won over the file for localhost")
	}
}
