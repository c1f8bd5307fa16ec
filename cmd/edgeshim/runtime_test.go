package main

import (
	"io"
	"log/slog"
	"runtime/debug"
	"testing"

	"github.com/edgeshim/edgeshim/config"
)

// TestApplyRuntime: the runtime section sets the collector; GOGC and
// GOMEMLIMIT in the environment win over it.
func TestApplyRuntime(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rc := config.Runtime{GCPercent: 321, MemoryLimit: 123 << 20}
	env := map[string]string{}
	restore := applyRuntime(rc, func(k string) string { return env[k] }, log)
	if got := debug.SetGCPercent(-1); got != 321 {
		t.Errorf("gc percent %d, want 321 from runtime.gc_percent", got)
	}
	debug.SetGCPercent(321)
	if got := debug.SetMemoryLimit(-1); got != 123<<20 {
		t.Errorf("memory limit %d, want 123MiB from runtime.memory_limit", got)
	}
	restore()

	before, beforeLimit := debug.SetGCPercent(-1), debug.SetMemoryLimit(-1)
	debug.SetGCPercent(before)
	env = map[string]string{"GOGC": "77", "GOMEMLIMIT": "1GiB"}
	restore = applyRuntime(rc, func(k string) string { return env[k] }, log)
	defer restore()
	if got := debug.SetGCPercent(-1); got != before {
		t.Errorf("with GOGC set: gc percent %d, want it untouched (%d)", got, before)
	}
	debug.SetGCPercent(before)
	if got := debug.SetMemoryLimit(-1); got != beforeLimit {
		t.Errorf("with GOMEMLIMIT set: memory limit %d, want it untouched (%d)", got, beforeLimit)
	}
}
