package integration

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"crypto/rand"
	"crypto/x509"
)

// Every identity source is attacked here by a device (or anyone) trying
// to be another device, over real TLS on loopback.

// getWith sends GET path with the given headers and returns the status.
func getWith(t *testing.T, c *http.Client, url string, hdr map[string]string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestImpersonateHeaderUntrustedPeer: with trusted_proxies that do not
// include the client, X-Device-Id is ignored: 401 for every claim, counted
// as untrusted_peer, and a flood of them is not a flood of log lines.
func TestImpersonateHeaderUntrustedPeer(t *testing.T) {
	m := startMosquitto(t, "")
	e := startEdgeshim(t, bridgeConfig(m.URL(), "{from: header, header: X-Device-Id}", "trusted_proxies: [10.0.0.0/8]\n"))
	c := e.Client()
	if code := getWith(t, c, e.URL("/devices/door-1/commands"), map[string]string{"X-Device-Id": "door-1"}); code != 401 {
		t.Fatalf("claimed door-1 from 127.0.0.1: %d, want 401", code)
	}
	const flood = 300
	for range flood {
		if code := getWith(t, c, e.URL("/devices/door-1/commands"), map[string]string{"X-Device-Id": "door-1"}); code != 401 {
			t.Fatalf("flood: %d, want 401", code)
		}
	}
	if got := e.WaitMetric("edgeshim_bridge_auth_failures_total", flood+1, 10*time.Second, `reason="untrusted_peer"`); got != flood+1 {
		t.Errorf("untrusted_peer failures %v, want %d", got, flood+1)
	}
	lines := regexp.MustCompile(`device request refused.*untrusted_peer`).FindAllString(e.Logs.String(), -1)
	if len(lines) == 0 || len(lines) > 60 {
		t.Errorf("%d log lines for %d refusals, want 1-60 (rate limited)", len(lines), flood+1)
	}
	if e.Metric("edgeshim_bridge_sessions_open") != 0 {
		t.Error("a session was opened for a claimed identity")
	}
}

// TestImpersonateHeaderTrustedPeer: from a trusted proxy the header names
// the device; a header of another device than the path's is 403, none 401.
func TestImpersonateHeaderTrustedPeer(t *testing.T) {
	m := startMosquitto(t, "")
	e := startEdgeshim(t, bridgeConfig(m.URL(), "{from: header, header: X-Device-Id}", "trusted_proxies: [127.0.0.0/8]\n"))
	c := e.Client()
	for _, tc := range []struct {
		name, path, dev string
		code            int
	}{
		{"own id", "/devices/door-1/commands", "door-1", 204},
		{"another device's path", "/devices/door-2/commands", "door-1", 403},
		{"no header", "/devices/door-1/commands", "", 401},
		{"wildcard id", "/devices/door-1/commands", "door+1", 400},
	} {
		hdr := map[string]string{}
		if tc.dev != "" {
			hdr["X-Device-Id"] = tc.dev
		}
		if code := getWith(t, c, e.URL(tc.path), hdr); code != tc.code {
			t.Errorf("%s: %d, want %d", tc.name, code, tc.code)
		}
	}
}

// TestImpersonateToken: another device's token, a prefix of the token, an
// empty token and no token are all 401 on door-1's path; only door-1's
// own token passes. The tokens file is in the line format.
func TestImpersonateToken(t *testing.T) {
	m := startMosquitto(t, "")
	tokens := filepath.Join(t.TempDir(), "tokens.txt")
	writeTokenFile(t, tokens, map[string]string{"door-1": "s3cret-door-1-abcdef", "door-2": "s3cret-door-2-abcdef"})
	e := startEdgeshim(t, bridgeConfig(m.URL(), fmt.Sprintf("{from: token, tokens: %q}", tokens), ""))
	c := e.Client()
	url := e.URL("/devices/door-1/commands")
	for _, tc := range []struct {
		name string
		hdr  map[string]string
		code int
	}{
		{"own token", map[string]string{"Authorization": "Bearer s3cret-door-1-abcdef"}, 204},
		{"another device's token", map[string]string{"Authorization": "Bearer s3cret-door-2-abcdef"}, 401},
		{"prefix of the token", map[string]string{"Authorization": "Bearer s3cret-door-1"}, 401},
		{"token plus a suffix", map[string]string{"Authorization": "Bearer s3cret-door-1-abcdefX"}, 401},
		{"empty token", map[string]string{"Authorization": "Bearer "}, 401},
		{"no token", nil, 401},
		{"basic scheme", map[string]string{"Authorization": "Basic s3cret-door-1-abcdef"}, 401},
	} {
		if code := getWith(t, c, url, tc.hdr); code != tc.code {
			t.Errorf("%s: %d, want %d", tc.name, code, tc.code)
		}
	}
	if got := e.WaitMetric("edgeshim_bridge_auth_failures_total", 3, 10*time.Second, `reason="bad_token"`); got != 3 {
		t.Errorf("bad_token failures %v, want 3", got)
	}
	if strings.Contains(e.Logs.String(), "s3cret") {
		t.Error("a token appeared in the logs")
	}
}

// writeTokenFile writes device → sha256(token) in the line format.
func writeTokenFile(t testing.TB, path string, tokens map[string]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# device sha256(token)\n")
	for dev, tok := range tokens {
		sum := sha256.Sum256([]byte(tok))
		fmt.Fprintf(&b, "%s %s\n", dev, hex.EncodeToString(sum[:]))
	}
	if err := os.WriteFile(path+".tmp", []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// certClient is an HTTP client presenting cert whatever CAs the server
// names (Go withholds a certificate from a CA the server does not name).
func certClient(t testing.TB, e *Edge, cert *tls.Certificate) *http.Client {
	tc := e.TLSConfig()
	if cert != nil {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	tr := &http.Transport{TLSClientConfig: tc}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// writeCRL writes a PEM CRL of ca revoking the leaf certificates given.
func (ca *testCA) writeCRL(t testing.TB, path string, revoked ...tls.Certificate) {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, c := range revoked {
		leaf, _ := x509.ParseCertificate(c.Certificate[0])
		entries = append(entries, x509.RevocationListEntry{SerialNumber: leaf.SerialNumber, RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(time.Now().UnixNano()),
		ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour), RevokedCertificateEntries: entries}, ca.cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".tmp", pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// TestImpersonateCert: another device's certificate on this device's
// path is 403; a revoked certificate (bad_certificate) and one from
// another CA (unknown_ca) fail the handshake, even in verify_if_given.
func TestImpersonateCert(t *testing.T) {
	m := startMosquitto(t, "")
	ca, rogue := newTestCA(t), newTestCA(t)
	door8, door9, revoked := ca.client(t, "door-8"), ca.client(t, "door-9"), ca.client(t, "door-7")
	crl := filepath.Join(t.TempDir(), "crl.pem")
	ca.writeCRL(t, crl, revoked)
	e := startEdgeshim(t, bridgeConfig(m.URL(), "{from: cert}", "")+
		fmt.Sprintf("tls: {client_auth: {ca: %q, crl: %q, mode: verify_if_given}}\n", ca.File, crl))
	forged := rogue.client(t, "door-8")
	for _, tc := range []struct {
		name  string
		cert  *tls.Certificate
		code  int    // 0: the handshake fails
		alert string // with this alert
	}{
		{"own certificate", &door8, 204, ""},
		{"another device's certificate", &door9, 403, ""},
		{"no certificate", nil, 401, ""},
		{"revoked certificate", &revoked, 0, "bad certificate"},
		{"certificate from another CA", &forged, 0, "unknown certificate authority"},
	} {
		r := poll(certClient(t, e, tc.cert), e.URL("/devices/door-8/commands"))
		if tc.code == 0 {
			if r.err == nil || !strings.Contains(r.err.Error(), tc.alert) {
				t.Errorf("%s: err %v, want a failed handshake (%s)", tc.name, r.err, tc.alert)
			}
			continue
		}
		if r.err != nil || r.code != tc.code {
			t.Errorf("%s: %+v, want %d", tc.name, r, tc.code)
		}
	}
	if got := e.WaitMetric("edgeshim_tls_client_certs_refused_total", 1, 10*time.Second, `reason="revoked"`); got != 1 {
		t.Errorf("revoked refusals %v, want 1", got)
	}
}

// TestImpersonatePath: identity from the path (allow_unauthenticated)
// proves nothing — this is what it costs: anyone may poll any id, and so
// take the commands queued for it. Use it only behind something that
// authenticates.
func TestImpersonatePath(t *testing.T) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/victim/status")
	e := startEdgeshim(t, bridgeConfig(m.URL(), "", ""))
	res := make(chan pollResult, 1)
	go func() { res <- poll(e.Client(), e.URL("/devices/victim/commands?wait=20")) }()
	await(t, status, "online", 10*time.Second)
	app.publish("devices/victim/commands", "unlock")
	if r := <-res; r.code != 200 || r.body != "unlock" {
		t.Fatalf("anyone polling victim: %+v; path identity gives its commands to whoever asks", r)
	}
}
