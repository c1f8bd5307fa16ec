package integration

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

const tlsTestConfig = `
listen: {https: "127.0.0.1:0", admin: "127.0.0.1:0"}
limits: {per_ip: {rate: 10000, burst: 10000}}
%s
`

// dialTLS makes one fresh TLS connection and reports whether it resumed.
func dialTLS(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	// A request makes the client read the TLS 1.3 tickets sent after the
	// handshake.
	io.WriteString(c, "GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	c.Read(buf)
	return c.ConnectionState().DidResume
}

func clientTLS(e *Edge, maxVersion uint16) *tls.Config {
	c := e.TLSConfig()
	c.MaxVersion = maxVersion
	c.NextProtos = []string{"http/1.1"}
	c.ClientSessionCache = tls.NewLRUClientSessionCache(16)
	return c
}

// TestTLSResumptionRate: fresh connections from a client with a session
// cache resume (at least 95 of 100), on TLS 1.3 and TLS 1.2, and
// /metrics counts them as resumed.
func TestTLSResumptionRate(t *testing.T) {
	e := startEdgeshim(t, fmt.Sprintf(tlsTestConfig, ""))
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cfg := clientTLS(e, v)
		dialTLS(t, e.Addr("https"), cfg)
		resumed := 0
		for range 100 {
			if dialTLS(t, e.Addr("https"), cfg) {
				resumed++
			}
		}
		t.Logf("%s: %d/100 fresh connections resumed", tls.VersionName(v), resumed)
		if resumed < 95 {
			t.Errorf("%s: %d/100 resumed, want at least 95", tls.VersionName(v), resumed)
		}
		if got := e.Metric("edgeshim_tls_handshakes_total", `resumed="true"`, `version="`+tls.VersionName(v)+`"`); got < float64(resumed) {
			t.Errorf("%s: metric resumed=%v, want at least %d", tls.VersionName(v), got, resumed)
		}
	}
}

// TestTLSMinVersion13RefusesTLS12: min_version 1.3 refuses TLS 1.2 clients.
func TestTLSMinVersion13RefusesTLS12(t *testing.T) {
	e := startEdgeshim(t, fmt.Sprintf(tlsTestConfig, `tls: {min_version: "1.3"}`))
	if _, err := tls.Dial("tcp", e.Addr("https"), clientTLS(e, tls.VersionTLS12)); err == nil {
		t.Fatal("TLS 1.2 client accepted with min_version 1.3")
	}
	if e.Metric("edgeshim_tls_handshakes_total") != 0 {
		t.Error("a refused handshake was counted as completed")
	}
	if got := e.WaitMetric("edgeshim_tls_handshake_errors_total", 1, 5*time.Second, `reason="protocol_version"`); got != 1 {
		t.Errorf("handshake errors{reason=protocol_version} = %v, want 1", got)
	}
	e.Logs.waitLine(t, regexp.MustCompile(`msg="TLS handshake failed" reason=protocol_version count=1 addr=127.0.0.1`), 5*time.Second)
}

// TestTLSSharedKeyFileAndRotation: two instances sharing a key_file resume
// each other's tickets; after a rotation of the file (SIGHUP), a ticket
// under the kept key resumes and one under the dropped key does a full
// handshake.
func TestTLSSharedKeyFileAndRotation(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "ticket-keys")
	k1, k2, k3 := strings.Repeat("a1", 32), strings.Repeat("b2", 32), strings.Repeat("c3", 32)
	os.WriteFile(keyFile, []byte(k1+"\n"), 0o600)
	// Both replicas serve the same certificate, as behind a load balancer.
	cfg := fmt.Sprintf(tlsTestConfig, fmt.Sprintf(`tls: {session_tickets: {key_file: %q}}`, keyFile))
	a := startEdgeshim(t, cfg)
	shared := filepath.Join(a.Dir, ".edgeshim")
	bDir := t.TempDir()
	os.MkdirAll(filepath.Join(bDir, ".edgeshim"), 0o700)
	for _, f := range []string{"selfsigned-cert.pem", "selfsigned-key.pem"} {
		data, _ := os.ReadFile(filepath.Join(shared, f))
		os.WriteFile(filepath.Join(bDir, ".edgeshim", f), data, 0o600)
	}
	b := startEdgeshim(t, cfg, EdgeOptions{Dir: bDir})

	cl := clientTLS(a, 0)
	dialTLS(t, a.Addr("https"), cl)
	if !dialTLS(t, b.Addr("https"), cl) {
		t.Fatal("replica b did not resume a ticket issued by replica a")
	}

	// Two clients hold tickets issued under k1.
	keptClient, droppedClient := clientTLS(a, 0), clientTLS(a, 0)
	dialTLS(t, a.Addr("https"), keptClient)
	dialTLS(t, a.Addr("https"), droppedClient)
	reload := func(keys ...string) {
		os.WriteFile(keyFile, []byte(strings.Join(keys, "\n")+"\n"), 0o600)
		a.Signal(syscall.SIGHUP)
		a.Logs.waitLine(t, regexp.MustCompile(`ticket keys loaded.*ticket_key_id=`+keyIDHex(keys[0])), 10*time.Second)
	}
	reload(k2, k1) // rotation: k2 issues, k1 kept
	if !dialTLS(t, a.Addr("https"), keptClient) {
		t.Error("ticket under k1, still kept, did not resume")
	}
	reload(k3, k2) // k1 dropped
	if dialTLS(t, a.Addr("https"), droppedClient) {
		t.Error("ticket under the dropped key k1 resumed")
	}
	if !dialTLS(t, a.Addr("https"), keptClient) {
		t.Error("ticket under k2 (issued at the last resumption) did not resume")
	}
}

func keyIDHex(hexKey string) string {
	var k [32]byte
	for i := range 32 {
		fmt.Sscanf(hexKey[2*i:2*i+2], "%02x", &k[i])
	}
	return keyID(k)
}

// TestSIGTERMDrainsInFlight: a request in flight when SIGTERM arrives is
// answered before edgeshim exits; new connections are refused meanwhile.
func TestSIGTERMDrainsInFlight(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "finished")
	}))
	defer backend.Close()
	e := startEdgeshim(t, fmt.Sprintf(tlsTestConfig, fmt.Sprintf("shutdown: {grace: 20s, drain_delay: 500ms}\nroutes: [{path: /, proxy: {backends: [%q]}}]", backend.URL)))
	c := e.Client()
	type result struct {
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := c.Get(e.URL("/slow"))
		if err != nil {
			res <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{body: string(b)}
	}()
	<-arrived
	e.Signal(syscall.SIGTERM)
	e.Logs.waitLine(t, regexp.MustCompile(`msg="draining`), 10*time.Second)
	// The listener closes just before that line; the in-flight request is
	// still held, so refusal must come while it drains.
	refused := false
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		conn, err := net.DialTimeout("tcp", e.Addr("https"), time.Second)
		if err != nil {
			refused = true
			break
		}
		conn.Close()
	}
	if !refused {
		t.Error("new connections still accepted 5s into draining")
	}
	close(release)
	r := <-res
	if r.err != nil || r.body != "finished" {
		t.Fatalf("in-flight request: %q %v, want finished", r.body, r.err)
	}
	if err := e.Wait(20 * time.Second); err != nil {
		t.Errorf("exit: %v", err)
	}
}

// TestSIGHUPReloadsCertificates: after the certificate files change and
// SIGHUP, new handshakes get the new certificate while a connection opened
// before keeps working.
func TestSIGHUPReloadsCertificates(t *testing.T) {
	ca := newTestCA(t)
	c1, k1 := ca.serverFiles(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "edge.crt"), filepath.Join(dir, "edge.key")
	copyFile(t, c1, certFile)
	copyFile(t, k1, keyFile)
	e := startEdgeshim(t, fmt.Sprintf(tlsTestConfig, fmt.Sprintf(`tls: {certs: [{cert: %q, key: %q}]}`, certFile, keyFile)))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(mustRead(t, ca.File))
	serial := func() string {
		c, err := tls.Dial("tcp", e.Addr("https"), &tls.Config{RootCAs: pool, ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}
	defer tr.CloseIdleConnections()
	old := &http.Client{Transport: tr}
	get := func() int {
		resp, err := old.Get(e.URL("/x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	get() // opens the keep-alive connection
	before := serial()
	c2, k2 := ca.serverFiles(t)
	copyFile(t, c2, certFile)
	copyFile(t, k2, keyFile)
	e.Signal(syscall.SIGHUP)
	e.Logs.waitLine(t, regexp.MustCompile(`tls reloaded`), 10*time.Second)
	if after := serial(); after == before {
		t.Error("new handshakes still get the old certificate after SIGHUP")
	}
	if code := get(); code != 404 {
		t.Errorf("connection opened before the reload: %d", code)
	}
}

func copyFile(t *testing.T, from, to string) {
	if err := os.WriteFile(to, mustRead(t, from), 0o600); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, f string) []byte {
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
