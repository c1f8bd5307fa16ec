package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestComposeConfig: docker-compose accepts examples/compose/compose.yaml
// (`config` parses and validates it against the Compose schema; it needs
// no Docker engine).
func TestComposeConfig(t *testing.T) {
	dc := requireTool(t, "docker-compose")
	cmd := exec.Command(dc, "-f", "compose.yaml", "config", "-q")
	cmd.Dir = "../examples/compose"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
}

// TestSystemdUnitVerify: systemd-analyze verifies examples/systemd's unit
// (its ExecStart pointed at the binary under test, which must exist) and
// rates its exposure at most 2.0 ("OK").
func TestSystemdUnitVerify(t *testing.T) {
	sa := requireTool(t, "systemd-analyze")
	data, err := os.ReadFile("../examples/systemd/edgeshim.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := strings.ReplaceAll(string(data), "ExecStart=/usr/local/bin/edgeshim ", "ExecStart="+edgeshimBin+" ")
	if unit == string(data) {
		t.Fatal("ExecStart does not run /usr/local/bin/edgeshim")
	}
	file := filepath.Join(t.TempDir(), "edgeshim.service")
	if err := os.WriteFile(file, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sa, "verify", file).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command(sa, "security", "--offline=true", file).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	if level, _ := strconv.ParseFloat(string(m[1]), 64); level > 2.0 {
		t.Errorf("exposure level %.1f, want at most 2.0:\n%s", level, out)
	}
}
