package integration

import (
	"bufio"
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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// edgeshimBin is the binary built once by TestMain.
var edgeshimBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edgeshim-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	edgeshimBin = filepath.Join(dir, "edgeshim")
	args := []string{"build", "-o", edgeshimBin}
	if os.Getenv("EDGESHIM_RACE") != "" {
		args = append(args, "-race") // the binary under test, with the race detector
	}
	build := exec.Command("go", append(args, "../cmd/edgeshim")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build edgeshim:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTool returns the path of an external program the test needs. A
// missing program skips the test locally and fails it under CI=true.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/usr/local/bin", filepath.Join(os.Getenv("HOME"), "go/bin")} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name)
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required (CI=true): install it (see .ci/run)", name)
	}
	t.Skipf("%s not installed", name)
	return ""
}

// freePort returns a TCP port free on 127.0.0.1 at the time of the call.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitTCP waits until addr accepts TCP connections, for processes that give
// no readiness signal of their own.
func waitTCP(t testing.TB, addr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not accepting after %s: %v", addr, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logBuffer is a goroutine-safe copy of a process's output that signals
// when lines arrive.
type logBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines []string
	cond  *sync.Cond
	done  bool
}

func newLogBuffer() *logBuffer {
	b := &logBuffer{}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *logBuffer) consume(r io.Reader, tee io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if tee != nil {
			fmt.Fprintln(tee, line)
		}
		b.mu.Lock()
		b.buf.WriteString(line + "\n")
		b.lines = append(b.lines, line)
		b.cond.Broadcast()
		b.mu.Unlock()
	}
	b.mu.Lock()
	b.done = true
	b.cond.Broadcast()
	b.mu.Unlock()
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitLine waits until a line matching re appears (from the start of the
// output) and returns its submatches, or fails after within.
func (b *logBuffer) waitLine(t testing.TB, re *regexp.Regexp, within time.Duration) []string {
	t.Helper()
	timer := time.AfterFunc(within, func() {
		b.mu.Lock()
		b.cond.Broadcast()
		b.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(within)
	b.mu.Lock()
	for i := 0; ; {
		for ; i < len(b.lines); i++ {
			if m := re.FindStringSubmatch(b.lines[i]); m != nil {
				b.mu.Unlock()
				return m
			}
		}
		if b.done || time.Now().After(deadline) {
			out := b.buf.String()
			b.mu.Unlock()
			t.Fatalf("no log line matching %q within %s; output:\n%s", re, within, out)
			return nil
		}
		b.cond.Wait()
	}
}

// Edge is a running edgeshim process.
type Edge struct {
	t       testing.TB
	cmd     *exec.Cmd
	Dir     string
	Logs    *logBuffer
	addrs   map[string]string
	exited  chan struct{}
	exitErr error
}

// EdgeOptions tune startEdgeshim.
type EdgeOptions struct {
	// Dir is the working directory (config, data dir). Default: a new
	// t.TempDir(). Reuse one to restart "the same" instance.
	Dir string
	// Listeners are the listener names to wait for. Default: https, admin.
	Listeners []string
	// Env adds environment variables.
	Env []string
	// Prefix runs edgeshim under a command, e.g. prlimit --nofile=300.
	Prefix []string
}

// startEdgeshim writes cfg to edgeshim.yaml in a temp dir and runs
// `edgeshim run -c` there, waiting until the named listeners are bound.
// Addresses in cfg should use port 0 ("127.0.0.1:0"); the bound ones are
// read from the log. The process is killed at test cleanup if still alive.
func startEdgeshim(t testing.TB, cfg string, o ...EdgeOptions) *Edge {
	t.Helper()
	var opt EdgeOptions
	if len(o) > 0 {
		opt = o[0]
	}
	if opt.Dir == "" {
		opt.Dir = t.TempDir()
	}
	if len(opt.Listeners) == 0 {
		opt.Listeners = []string{"https", "admin"}
	}
	path := filepath.Join(opt.Dir, "edgeshim.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &Edge{t: t, Dir: opt.Dir, Logs: newLogBuffer(), addrs: map[string]string{}, exited: make(chan struct{})}
	args := append(append([]string{}, opt.Prefix...), edgeshimBin, "run", "-c", path)
	e.cmd = exec.Command(args[0], args[1:]...)
	e.cmd.Dir = opt.Dir
	e.cmd.Env = append(os.Environ(), opt.Env...)
	stderr, err := e.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	e.cmd.Stdout = e.cmd.Stderr
	var tee io.Writer
	if os.Getenv("EDGESHIM_TEST_LOGS") != "" {
		tee = os.Stderr
	}
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go e.Logs.consume(stderr, tee)
	go func() {
		e.exitErr = e.cmd.Wait()
		close(e.exited)
	}()
	t.Cleanup(func() {
		e.Kill()
		if strings.Contains(e.Logs.String(), "WARNING: DATA RACE") {
			t.Error("edgeshim reported a data race (EDGESHIM_RACE build)")
		}
		if t.Failed() {
			t.Logf("edgeshim output:\n%s", e.Logs.String())
		}
	})
	for _, name := range opt.Listeners {
		re := regexp.MustCompile(`(?:msg=listening name=` + regexp.QuoteMeta(name) + ` addr=(\S+))|(?:"msg":"listening","name":"` + regexp.QuoteMeta(name) + `","addr":"([^"]+)")`)
		m := e.Logs.waitLine(t, re, 30*time.Second)
		addr := m[1]
		if addr == "" {
			addr = m[2]
		}
		e.addrs[name] = addr
	}
	return e
}

// Addr returns a bound listener address by name ("https", "admin", ...).
func (e *Edge) Addr(name string) string {
	a, ok := e.addrs[name]
	if !ok {
		e.t.Fatalf("listener %q was not awaited", name)
	}
	return a
}

// URL returns https://ADDR + path for the https listener.
func (e *Edge) URL(path string) string { return "https://" + e.Addr("https") + path }

// Signal sends sig to the process.
func (e *Edge) Signal(sig os.Signal) {
	e.noteFastPolls()
	if err := e.cmd.Process.Signal(sig); err != nil {
		e.t.Logf("signal %v: %v", sig, err)
	}
}

// Stop sends SIGTERM and waits for exit (failing after within).
func (e *Edge) Stop(within time.Duration) error {
	e.Signal(syscall.SIGTERM)
	return e.Wait(within)
}

// Wait waits for the process to exit and returns its exit error.
func (e *Edge) Wait(within time.Duration) error {
	select {
	case <-e.exited:
		return e.exitErr
	case <-time.After(within):
		e.t.Fatalf("edgeshim did not exit within %s", within)
		return nil
	}
}

// Kill sends SIGKILL and waits for exit.
func (e *Edge) Kill() {
	select {
	case <-e.exited:
		return
	default:
	}
	e.noteFastPolls()
	_ = e.cmd.Process.Kill()
	<-e.exited
}

// CertPool trusts the self-signed development certificate of this instance.
func (e *Edge) CertPool() *x509.CertPool {
	e.t.Helper()
	pem, err := os.ReadFile(filepath.Join(e.Dir, ".edgeshim", "selfsigned-cert.pem"))
	if err != nil {
		e.t.Fatalf("read self-signed cert: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool
}

// TLSConfig returns a client config that trusts the dev certificate and
// names "localhost".
func (e *Edge) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: e.CertPool(), ServerName: "localhost"}
}

// Client returns an HTTP client (HTTP/2 enabled, unless testH1) that
// trusts the dev certificate.
func (e *Edge) Client() *http.Client {
	tr := &http.Transport{TLSClientConfig: e.TLSConfig(), ForceAttemptHTTP2: !testH1, MaxIdleConnsPerHost: 100}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}
}

// Metric returns the sum of the samples of a metric on /metrics whose
// labels contain every given name="value" pair.
func (e *Edge) Metric(name string, labels ...string) float64 {
	e.t.Helper()
	resp, err := http.Get("http://" + e.Addr("admin") + "/metrics")
	if err != nil {
		e.t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	return sumMetric(resp.Body, name, labels...)
}

func sumMetric(r io.Reader, name string, labels ...string) float64 {
	var sum float64
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// Mosquitto is a mosquitto broker run as a process on a loopback port.
type Mosquitto struct {
	t      testing.TB
	bin    string
	Dir    string
	Port   int
	Extra  string // extra config lines
	cmd    *exec.Cmd
	logs   *logBuffer
	exited chan struct{}
}

// startMosquitto starts mosquitto on a free 127.0.0.1 port with
// persistence in a temp dir (so Restart keeps queued messages). extra is
// appended to the config file.
func startMosquitto(t testing.TB, extra string) *Mosquitto {
	t.Helper()
	m := &Mosquitto{t: t, bin: requireTool(t, "mosquitto"), Dir: t.TempDir(), Port: freePort(t), Extra: extra}
	m.start()
	t.Cleanup(m.Stop)
	return m
}

// Addr is host:port of the broker.
func (m *Mosquitto) Addr() string { return "127.0.0.1:" + strconv.Itoa(m.Port) }

// URL is mqtt://host:port of the broker.
func (m *Mosquitto) URL() string { return "mqtt://" + m.Addr() }

func (m *Mosquitto) start() {
	m.t.Helper()
	user := ""
	if os.Geteuid() == 0 {
		// Run as root, mosquitto drops to user "mosquitto", which cannot
		// read the test's private temp dir (persistence, TLS keys).
		user = "user root\n"
	}
	conf := fmt.Sprintf(user+`listener %d 127.0.0.1
allow_anonymous true
persistence true
persistence_location %s/
max_queued_messages 10000
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type notice
%s
`, m.Port, m.Dir, m.Extra)
	path := filepath.Join(m.Dir, "mosquitto.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		m.t.Fatal(err)
	}
	m.logs = newLogBuffer()
	m.cmd = exec.Command(m.bin, "-c", path)
	out, err := m.cmd.StderrPipe()
	if err != nil {
		m.t.Fatal(err)
	}
	m.cmd.Stdout = m.cmd.Stderr
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	go m.logs.consume(out, nil)
	m.exited = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { c.Wait(); close(done) }(m.cmd, m.exited)
	m.t.Cleanup(func() {
		if m.t.Failed() {
			m.t.Logf("mosquitto output:\n%s", m.logs.String())
		}
	})
	waitTCP(m.t, m.Addr(), 10*time.Second)
}

// Stop stops the broker (SIGTERM, so it saves its persistence file).
func (m *Mosquitto) Stop() {
	if m.cmd == nil {
		return
	}
	select {
	case <-m.exited:
	default:
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.exited:
		case <-time.After(10 * time.Second):
			_ = m.cmd.Process.Kill()
			<-m.exited
		}
	}
	m.cmd = nil
}

// Restart stops and starts the broker on the same port.
func (m *Mosquitto) Restart() {
	m.Stop()
	m.start()
}

// WaitMetric waits until a metric (summed as in Metric) reaches at least
// want, for values that settle just after the event the test caused (a
// server-side count behind a client-side failure). It returns the value.
func (e *Edge) WaitMetric(name string, want float64, within time.Duration, labels ...string) float64 {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		v := e.Metric(name, labels...)
		if v >= want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(20 * time.Millisecond)
	}
}
