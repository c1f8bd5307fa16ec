package main

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestValidateCommand(t *testing.T) {
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad.yaml", "tls: {min_version: \"1.0\", session_tickets: {keep: -2}}\nlimits: {max_headers: -1}\n")
	var out, errb bytes.Buffer
	if code := run([]string{"validate", "-c", bad}, &out, &errb); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	want := []string{
		bad + `:1: tls.min_version: must be "1.2" or "1.3" (got "1.0")`,
		bad + `:1: tls.session_tickets.keep: must be at least 1`,
		bad + `:2: limits.max_headers: must be at least 1`,
	}
	if got := strings.TrimSpace(errb.String()); got != strings.Join(want, "\n") {
		t.Errorf("validate printed:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	good := writeFile(t, dir, "good.yaml", "listen: {https: \":8443\"}\n")
	out.Reset()
	if code := run([]string{"validate", "-c", good}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "ok: ") {
		t.Errorf("valid config: exit %d, %q", code, out.String())
	}
	if code := run([]string{"version"}, &out, &errb); code != 0 {
		t.Errorf("version exit %d", code)
	}
	if code := run([]string{"bogus"}, &out, &errb); code != 2 {
		t.Errorf("unknown command exit %d, want 2", code)
	}
}

// TestPositionalArgumentRefused: "edgeshim run FILE" used to ignore FILE
// and serve the embedded default on every interface.
func TestPositionalArgumentRefused(t *testing.T) {
	file := writeFile(t, t.TempDir(), "edgeshim.yaml", "listen: {https: \":8443\"}\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", file}, `edgeshim run: unexpected argument "` + file + `"; a config file is given with -c FILE`},
		{[]string{"run", file, "-c", file}, `edgeshim run: unexpected argument "` + file + `"`},
		{[]string{"run", "-c", file, "extra"}, `edgeshim run: unexpected argument "extra"`},
		{[]string{"validate", file}, `edgeshim validate: unexpected argument "` + file + `"; a config file is given with -c FILE`},
		{[]string{"validate", "-c", file, "extra"}, `edgeshim validate: unexpected argument "extra"`},
		{[]string{"version", "extra"}, `edgeshim version: unexpected argument "extra"`},
		{[]string{"help", "run"}, `edgeshim help: unexpected argument "run"`},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		if code != 2 || !strings.HasPrefix(errb.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and %q", tc.args, code, errb.String(), tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("%q: wrote to stdout: %q", tc.args, out.String())
		}
	}
}

// TestValidateReportsEverything: a typo and four other mistakes (a wrong
// type, an unset variable, a missing certificate, two listeners on one
// port) are all reported in one run, one per line, with file and line.
func TestValidateReportsEverything(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("EDGESHIM_TEST_MAXC", "1000")
	file := writeFile(t, dir, "edgeshim.yaml", `listen:
  https: ":8443"
  admin: "0.0.0.0:8443"
limits:
  max_conns: ${EDGESHIM_TEST_MAXC}
  max_headers: many
  timeouts:
    idel: 30s
tls:
  certs:
    - cert: missing-cert.pem
      key: ${EDGESHIM_TEST_UNSET_KEY}
`)
	var out, errb bytes.Buffer
	if code := run([]string{"validate", "-c", file}, &out, &errb); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errb.String())
	}
	want := []string{
		file + `:6: limits.max_headers: must be an integer (got "many")`,
		file + `:8: limits.timeouts.idel: unknown field (did you mean "idle"?)`,
		file + `:12: tls.certs[0].key: environment variable EDGESHIM_TEST_UNSET_KEY is not set (${EDGESHIM_TEST_UNSET_KEY:-default} gives a default)`,
		file + `:3: listen.admin: conflicts with listen.https: both listen on port 8443 (":8443" and "0.0.0.0:8443")`,
		file + `:11: tls.certs[0].cert: stat missing-cert.pem: no such file or directory`,
	}
	if got := strings.TrimSpace(errb.String()); got != strings.Join(want, "\n") {
		t.Errorf("validate printed:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	// run refuses the same file the same way, before listening anywhere.
	errb.Reset()
	if code := run([]string{"run", "-c", file}, &out, &errb); code != 1 || strings.Count(errb.String(), "\n") != len(want) {
		t.Errorf("run: exit %d, stderr:\n%s", code, errb.String())
	}
}

func TestValidateEnvInNumbers(t *testing.T) {
	file := writeFile(t, t.TempDir(), "edgeshim.yaml", "limits:\n  max_conns: ${EDGESHIM_TEST_MAXC}\n")
	var out, errb bytes.Buffer
	t.Setenv("EDGESHIM_TEST_MAXC", "1000")
	if code := run([]string{"validate", "-c", file}, &out, &errb); code != 0 {
		t.Errorf("MAXC=1000: exit %d: %s", code, errb.String())
	}
	t.Setenv("EDGESHIM_TEST_MAXC", "abc")
	errb.Reset()
	if code := run([]string{"validate", "-c", file}, &out, &errb); code != 1 ||
		strings.TrimSpace(errb.String()) != file+":2: limits.max_conns: ${EDGESHIM_TEST_MAXC} is not an integer" {
		t.Errorf("MAXC=abc: exit %d: %s", code, errb.String())
	}
}

func TestEmbeddedDefaultLoopbackOnly(t *testing.T) {
	cfg, err := loadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	for name, addr := range map[string]string{"https": cfg.Listen.HTTPS, "admin": cfg.Listen.Admin, "mqtt": cfg.EmbeddedBroker.Listen} {
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Errorf("embedded default %s listens on %q, want loopback", name, addr)
		}
	}
}

// TestAdminMethodNotAllowed: the admin endpoints answer other methods 405
// with Allow.
func TestAdminMethodNotAllowed(t *testing.T) {
	a, err := startAdmin("127.0.0.1:0", prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		w := httptest.NewRecorder()
		a.srv.Handler.ServeHTTP(w, httptest.NewRequest(http.MethodPost, path, nil))
		if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("POST %s: %d, Allow %q", path, w.Code, w.Header().Get("Allow"))
		}
	}
}
