package bridge

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestCountersStartAtZero: the telemetry results, disconnect reasons and
// connect results exist at 0 before the first event, so that rate() and
// alerts see them.
func TestCountersStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	newMetrics(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if got[mf.GetName()] == nil {
					got[mf.GetName()] = map[string]bool{}
				}
				got[mf.GetName()][l.GetName()+"="+l.GetValue()] = true
			}
		}
	}
	want := map[string][]string{
		"edgeshim_bridge_telemetry_total":           {"result=published", "result=failed", "result=unavailable"},
		"edgeshim_bridge_session_disconnects_total": {"reason=idle", "reason=evicted", "reason=shutdown", "reason=connection_lost", "reason=admin", "reason=websocket_closed"},
		"edgeshim_bridge_session_connects_total":    {"result=ok", "result=error"},
	}
	for name, labels := range want {
		for _, l := range labels {
			if !got[name][l] {
				t.Errorf("%s{%s} does not exist before the first event", name, l)
			}
		}
	}
}
