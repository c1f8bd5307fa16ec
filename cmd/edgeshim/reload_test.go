package main

import (
	"slices"
	"testing"

	"github.com/edgeshim/edgeshim/config"
)

// TestReloadableSplitsChanges: reloadable fields are taken from the new
// file; every other change is reported by its path and left as running.
func TestReloadableSplitsChanges(t *testing.T) {
	running := config.Default().WithDefaults()
	next := config.Default()
	next.Limits.MaxBody = 1000
	seven := 7.0
	next.Limits.PerIP.Rate = &seven
	next.Log.Level = "debug"
	next.Listen.HTTPS = ":9443"
	next.Limits.Timeouts.Idle = config.Duration(300e9)
	fleet := next.Bridges["fleet"]
	fleet.Upstream.URL = "mqtt://10.0.0.1:1883"
	next.Bridges = map[string]config.Bridge{"fleet": fleet}
	n := next.WithDefaults()

	eff := reloadable(running, n)
	if eff.Limits.MaxBody != 1000 || *eff.Limits.PerIP.Rate != 7 || eff.Log.Level != "debug" {
		t.Errorf("reloadable fields not taken: %+v %v", eff.Limits, eff.Log.Level)
	}
	if eff.Listen.HTTPS != running.Listen.HTTPS || eff.Bridges["fleet"].Upstream.URL != running.Bridges["fleet"].Upstream.URL {
		t.Error("a restart-only field was taken")
	}
	if running.Limits.MaxBody == 1000 {
		t.Error("running was modified")
	}
	got := diffPaths(eff, n)
	want := []string{"listen.https", "limits.timeouts.idle", "bridges.fleet.upstream.url"}
	if !slices.Equal(got, want) {
		t.Errorf("needs restart: %v, want %v", got, want)
	}
}
