package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/scenario"
)

// TestScenarioFilesValid keeps the committed benchmark scenarios valid.
func TestScenarioFilesValid(t *testing.T) {
	files, _ := filepath.Glob("../../integration/scenarios/*.yaml")
	if len(files) < 3 {
		t.Fatalf("found %d scenario files", len(files))
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := scenario.Parse(data); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestFlagsOverrideScenarioFile: a flag given beside -scenario wins, the
// file's other fields stay; -gen-tokens writes the bridge's format.
func TestFlagsOverrideScenarioFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "s.yaml")
	os.WriteFile(file, []byte("devices: {count: 7, prefix: door-, model: longpoll}\n"), 0o644)
	tokens := filepath.Join(dir, "tokens.yaml")
	var out, errb bytes.Buffer
	if code := run([]string{"-scenario", file, "-devices", "3", "-gen-tokens", tokens}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	data, _ := os.ReadFile(tokens)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "door-0: ") || len(strings.TrimPrefix(lines[0], "door-0: ")) != 64 {
		t.Errorf("tokens file (3 devices from the flag, prefix from the file):\n%s", data)
	}
	if code := run([]string{"-model", "pigeon"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "devices.model") {
		t.Errorf("bad model: exit %d, %s", code, errb.String())
	}
}

// TestHelpDocumentsEveryOption: -h prints every flag with its text.
func TestHelpDocumentsEveryOption(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"-h"}, &out, &errb); code != 0 {
		t.Fatalf("-h exit %d", code)
	}
	for _, f := range []string{"-model", "-interval", "-wait", "-tls", "-resumption", "-pq", "-tokens", "-cert-ca", "-telemetry-interval",
		"-ramp", "-sources", "-broker", "-rate", "-per-device", "-late", "-expiry", "-restart", "-storm", "-pid", "-metrics", "-json", "-url", "-target", "-grip-origin", "-pushpin-publish"} {
		if !strings.Contains(errb.String(), "  "+f+" ") && !strings.Contains(errb.String(), "  "+f+"\n") {
			t.Errorf("-h does not document %s", f)
		}
	}
}

// TestTargetFlags: -target takes edgeshim or pushpin; Pushpin takes its
// commands on its publish endpoint, not from a broker.
func TestTargetFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-target", "nginx"}, "-target"},
		{[]string{"-target", "pushpin", "-broker", "mqtt://127.0.0.1:1883", "-rate", "1"}, "-broker"},
	} {
		var out, errb bytes.Buffer
		if code := run(c.args, &out, &errb); code != 2 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: exit %d, %q; want 2 naming %s", c.args, code, errb.String(), c.want)
		}
	}
}
