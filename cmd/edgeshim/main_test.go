package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateCommand(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("tls: {min_version: \"1.0\", session_tickets: {keep: -2}}\nlimits: {max_headers: -1}\n"), 0o644)
	var out, errb bytes.Buffer
	if code := run([]string{"validate", "-c", bad}, &out, &errb); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	want := []string{
		`tls.min_version: must be "1.2" or "1.3" (got "1.0")`,
		`tls.session_tickets.keep: must be at least 1`,
		`limits.max_headers: must be at least 1`,
	}
	if got := strings.TrimSpace(errb.String()); got != strings.Join(want, "\n") {
		t.Errorf("validate printed:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("listen: {https: \":8443\"}\n"), 0o644)
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
