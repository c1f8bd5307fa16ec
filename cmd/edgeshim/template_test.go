package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidatePollTemplate: `edgeshim validate` trial-renders a bridge's
// poll template and names the field of a bad one.
func TestValidatePollTemplate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "edgeshim.yaml")
	os.WriteFile(path, []byte(`bridges:
  fleet:
    upstream: {url: "mqtt://127.0.0.1:1883"}
    identity: {from: path, allow_unauthenticated: true}
    commands: {topic: "devices/{device}/commands"}
    poll:
      path: "/devices/{device}/commands"
      format: template
      template: {body: '{"updates":[{{range .Commands}}{{.ID}}{{end}}]}'}
routes: [{path: /devices/, bridge: fleet}]
`), 0o600)
	var out, errb bytes.Buffer
	if code := run([]string{"validate", "-c", path}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "bridges.fleet.poll.template.body: ") || !strings.Contains(errb.String(), "not valid JSON") {
		t.Errorf("validate = %d, %q; want 1 naming bridges.fleet.poll.template.body", code, errb.String())
	}
}
