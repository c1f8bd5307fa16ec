package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCLIRefusesMisuse runs the real binary: "edgeshim run FILE" exits 2
// at once (it used to serve the embedded default, ignoring FILE), and
// "run -c" refuses a config whose certificate file is missing before it
// listens, the way validate does, naming file, line and field.
func TestCLIRefusesMisuse(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "edgeshim.yaml")
	if err := os.WriteFile(cfg, []byte("listen: {https: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\ntls:\n  certs: [{cert: nope.pem, key: nope.key}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"run", cfg}, 2, []string{`edgeshim run: unexpected argument "` + cfg + `"; a config file is given with -c FILE`}},
		{[]string{"run", "-c", cfg}, 1, []string{
			cfg + ":3: tls.certs[0].cert: stat nope.pem: no such file or directory",
			cfg + ":3: tls.certs[0].key: stat nope.key: no such file or directory"}},
		{[]string{"validate", "-c", cfg}, 1, []string{
			cfg + ":3: tls.certs[0].cert: stat nope.pem: no such file or directory",
			cfg + ":3: tls.certs[0].key: stat nope.key: no such file or directory"}},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		cmd := exec.CommandContext(ctx, edgeshimBin, tc.args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != tc.code {
			t.Errorf("%q: %v, want exit %d; output:\n%s", tc.args, err, tc.code, out)
			continue
		}
		if got := strings.TrimSpace(string(out)); got != strings.Join(tc.want, "\n") {
			t.Errorf("%q printed:\n%s\nwant:\n%s", tc.args, got, strings.Join(tc.want, "\n"))
		}
	}
}
