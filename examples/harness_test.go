package examples

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The examples run as their READMEs say: the real binary on the example's
// own file, with only what cannot be real in a test replaced (paths under
// /etc, public ports and hosts, ACME), against a real mosquitto.

var edgeshimBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edgeshim-examples-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	edgeshimBin = filepath.Join(dir, "edgeshim")
	build := exec.Command("go", "build", "-o", edgeshimBin, "../cmd/edgeshim")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build edgeshim:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTool finds a program; missing, it skips the test, or fails it
// under CI=true.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/" + name); err == nil {
		return "/usr/sbin/" + name
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required (CI=true): see .ci/install.sh", name)
	}
	t.Skipf("%s not installed", name)
	return ""
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// testPKI is a CA and one server certificate for every name the examples
// use, written as ca.pem, edge.crt and edge.key in dir.
type testPKI struct {
	dir  string
	pool *x509.CertPool
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "examples test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "edge"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames:    []string{"localhost", "edge.example.com", "api.example.com", "*.dash.example.com", "mqtt.example.com"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	write("edge.crt", "CERTIFICATE", der)
	write("edge.key", "EC PRIVATE KEY", kb)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{dir: dir, pool: pool}
}

func (p *testPKI) path(name string) string { return filepath.Join(p.dir, name) }

// lines collects a process's output and signals each new line.
type lines struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	cond *sync.Cond
	done bool
}

func newLines() *lines { l := &lines{}; l.cond = sync.NewCond(&l.mu); return l }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	l.cond.Broadcast()
	return len(p), nil
}

func (l *lines) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.buf.String() }

// wait returns the first submatches of re in the output, waiting up to
// within.
func (l *lines) wait(t *testing.T, re *regexp.Regexp, within time.Duration) []string {
	t.Helper()
	timer := time.AfterFunc(within, func() { l.mu.Lock(); l.done = true; l.cond.Broadcast(); l.mu.Unlock() })
	defer timer.Stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if m := re.FindStringSubmatch(l.buf.String()); m != nil {
			return m
		}
		if l.done {
			t.Fatalf("no output matching %q within %s:\n%s", re, within, l.buf.String())
		}
		l.cond.Wait()
	}
}

// startProcess runs a program until the test ends, its output in lines.
func startProcess(t *testing.T, dir string, env []string, name string, args ...string) *lines {
	out, _ := startCmd(t, dir, env, name, args...)
	return out
}

// startCmd is startProcess that also returns the process (to signal it).
func startCmd(t *testing.T, dir string, env []string, name string, args ...string) (*lines, *exec.Cmd) {
	t.Helper()
	out := newLines()
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, out, out
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(name), out.String())
		}
	})
	return out, cmd
}

// mosquitto is a real broker: a plain listener for the test's own
// clients and, with pki, a TLS one for edgeshim.
type mosquitto struct {
	plain, tls int
	logs       *lines
}

func startMosquitto(t *testing.T, pki *testPKI) *mosquitto {
	t.Helper()
	bin := requireTool(t, "mosquitto")
	m := &mosquitto{plain: freePort(t)}
	conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type error\nlog_type notice\nlog_type subscribe\n", m.plain)
	if os.Geteuid() == 0 {
		conf = "user root\n" + conf
	}
	if pki != nil {
		m.tls = freePort(t)
		conf += fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n", m.tls, pki.path("ca.pem"), pki.path("edge.crt"), pki.path("edge.key"))
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mosquitto.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	m.logs = startProcess(t, dir, nil, bin, "-c", filepath.Join(dir, "mosquitto.conf"))
	for _, p := range []int{m.plain, m.tls} {
		if p != 0 {
			waitTCP(t, "127.0.0.1:"+strconv.Itoa(p))
		}
	}
	return m
}

func waitTCP(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond) // nothing to await but the port
	}
}

// pub publishes with mosquitto_pub (QoS 1, MQTT 5) on the plain listener.
func (m *mosquitto) pub(t *testing.T, topic string, payload []byte) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "payload")
	os.WriteFile(f, payload, 0o600)
	out, err := exec.Command(requireTool(t, "mosquitto_pub"), "-V", "mqttv5", "-p", strconv.Itoa(m.plain), "-q", "1", "-t", topic, "-f", f).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
}

// sub starts mosquitto_sub for one message on topic and returns a func
// that waits for it.
func (m *mosquitto) sub(t *testing.T, topic string) func() string {
	t.Helper()
	cmd := exec.Command(requireTool(t, "mosquitto_sub"), "-V", "mqttv5", "-p", strconv.Itoa(m.plain), "-q", "1", "-t", topic, "-C", "1", "-W", "20")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	m.logs.wait(t, regexp.MustCompile(`auto-\S+ 1 `+regexp.QuoteMeta(topic)), 10*time.Second) // subscribed
	return func() string {
		cmd.Wait()
		return strings.TrimSpace(out.String())
	}
}

// example reads an example's config and applies the replacements; each
// must match, so that a changed example fails here rather than running
// something else.
func example(t *testing.T, name string, repl ...string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(name, "edgeshim.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for i := 0; i+1 < len(repl); i += 2 {
		if !strings.Contains(s, repl[i]) {
			t.Fatalf("%s/edgeshim.yaml no longer contains %q", name, repl[i])
		}
		s = strings.ReplaceAll(s, repl[i], repl[i+1])
	}
	return s
}

// edge is a running edgeshim with the addresses of its listeners.
type edge struct {
	addrs map[string]string
	logs  *lines
	cmd   *exec.Cmd
}

// startEdge runs edgeshim on cfg in dir and waits for the named
// listeners.
func startEdge(t *testing.T, dir, cfg string, env []string, listeners ...string) *edge {
	t.Helper()
	path := filepath.Join(dir, "edgeshim.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e := &edge{addrs: map[string]string{}}
	e.logs, e.cmd = startCmd(t, dir, env, edgeshimBin, "run", "-c", path)
	for _, n := range listeners {
		m := e.logs.wait(t, regexp.MustCompile(`msg=listening name=`+n+` addr=(\S+)`), 30*time.Second)
		e.addrs[n] = m[1]
	}
	return e
}

// client is curl --cacert ca.pem --connect-to ::addr: every host name
// reaches addr, verified against the test CA.
func client(t *testing.T, pki *testPKI, addr string) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool}, ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Minute}
}
