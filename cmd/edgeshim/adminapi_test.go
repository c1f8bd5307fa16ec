package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/edgeshim/edgeshim/config"
)

// TestRedactedConfig: /v1/config shows the configuration with defaults,
// but no password and no URL credentials.
func TestRedactedConfig(t *testing.T) {
	raw, err := config.Parse([]byte(`
routes:
  - {path: /devices/, bridge: fleet}
  - {path: /api/, proxy: {backends: ["http://svc:s3cret-url@10.0.0.5:8080"]}}
bridges:
  fleet:
    upstream: {url: "mqtts://edge:s3cret-url@broker:8883", username: edge, password: s3cret-pw}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/devices/{device}/commands"}
    commands: {topic: "devices/{device}/commands"}
`), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	cfg := raw.WithDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	v, err := redactedConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(v)
	s := string(out)
	if strings.Contains(s, "s3cret") {
		t.Errorf("a secret leaks: %s", s)
	}
	for _, want := range []string{`"password":"REDACTED"`, `mqtts://edge:REDACTED@broker:8883`, `http://svc:REDACTED@10.0.0.5:8080`,
		`"username":"edge"`, `"name":"/devices/"`, `"max_conns"`} {
		if !strings.Contains(s, want) {
			t.Errorf("rendered config lacks %s: %s", want, s)
		}
	}
}
