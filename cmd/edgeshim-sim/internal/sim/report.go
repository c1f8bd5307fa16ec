package sim

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/match"
	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/scenario"
)

// Report is a run's outcome; -json writes it as is.
type Report struct {
	Scenario       *scenario.Scenario `json:"scenario"`
	Started        time.Time          `json:"started"`
	ElapsedS       float64            `json:"elapsed_s"`
	Devices        int                `json:"devices"`
	OnlineAtEnd    int64              `json:"online_at_end"`
	Polls          int64              `json:"polls"`
	PollsOK        int64              `json:"polls_ok"`
	WindowS        float64            `json:"window_s"`
	PollsPerSecond float64            `json:"polls_per_second"`
	Failures       int64              `json:"failures"`
	Latency        Latency            `json:"latency"`
	Handshakes     int64              `json:"handshakes"`
	Resumed        int64              `json:"resumed"`
	ResumptionRate float64            `json:"resumption_rate"`
	Status         map[string]int64   `json:"status"`
	Refusals       map[string]int64   `json:"refusals"`
	Telemetry      struct {
		Sent     int64 `json:"sent"`
		Accepted int64 `json:"accepted"`
	} `json:"telemetry"`
	Commands      match.Counts     `json:"commands"`
	PublishErrors map[string]int64 `json:"publish_errors,omitempty"`
	Events        []EventResult    `json:"events,omitempty"`
	Server        *ServerReport    `json:"server,omitempty"`
	Projection    *Projection      `json:"projection,omitempty"`
}

// Latency histograms.
type Latency struct {
	Connect   Summary `json:"connect"`
	Handshake Summary `json:"handshake"`
	Poll      Summary `json:"poll"`
	Deliver   Summary `json:"publish_to_device"`
	// WindowHandshake and WindowPoll cover the steady state only (after
	// ramp-up, to Duration).
	WindowHandshake Summary `json:"window_handshake"`
	WindowPoll      Summary `json:"window_poll"`
}

// EventResult is what an event did and how long the fleet took to recover.
type EventResult struct {
	Kind     string  `json:"kind"`
	AtS      float64 `json:"at_s"`
	Command  string  `json:"command,omitempty"`
	CommandS float64 `json:"command_s,omitempty"`
	Error    string  `json:"error,omitempty"`
	// RecoveredAfterS: until every device had a successful poll (or
	// session) again; -1 if not within the run.
	RecoveredAfterS float64 `json:"recovered_after_s"`
}

// ServerReport is the server's resource use over the measurement window.
type ServerReport struct {
	Source          string  `json:"source"`
	RSSBaselineMiB  float64 `json:"rss_baseline_mib"`
	RSSEndMiB       float64 `json:"rss_end_mib"`
	CPUSeconds      float64 `json:"cpu_seconds"`
	CoresUsed       float64 `json:"cores_used"`
	CPUPerPollUS    float64 `json:"cpu_per_poll_us"`
	KiBPerDevice    float64 `json:"kib_per_device"`
	CPUPerDeviceUSs float64 `json:"cpu_per_device_us_per_s"`
}

// Projection scales the measured costs to a planned fleet.
type Projection struct {
	Cadence          string  `json:"cadence"`
	DevicesPerCore   float64 `json:"devices_per_core"`
	KiBPerDevice     float64 `json:"kib_per_device"`
	DevicesPerBoxMem float64 `json:"devices_per_box_memory"`
	BoxMemoryMiB     int     `json:"box_memory_mib"`
	BoxCores         int     `json:"box_cores"`
	PlanDevices      int     `json:"plan_devices"`
	PlanCores        float64 `json:"plan_cores"`
	PlanMemoryGiB    float64 `json:"plan_memory_gib"`
	PlanBoxes        int     `json:"plan_boxes"`
}

func round(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}

func (r *runner) report(start time.Time, s0 serverSample, w0, w1 window, onlineEnd int64, counts match.Counts, events []EventResult) *Report {
	st := r.st
	sc := r.sc
	rep := &Report{Scenario: sc, Started: start, ElapsedS: round(r.now().Sub(start).Seconds(), 2), Devices: sc.Devices.Count,
		OnlineAtEnd: onlineEnd, Polls: st.polls.Load(), PollsOK: st.pollsOK.Load(), Failures: st.failures.Load(),
		Handshakes: st.handshakes.Load(), Resumed: st.resumed.Load(), Commands: counts, Events: events}
	rep.Latency = Latency{st.connect.summary(), st.handshake.summary(), st.poll.summary(), st.deliver.summary(),
		st.handshakeW.summary(), st.pollW.summary()}
	rep.Status, rep.Refusals = st.snapshotMaps()
	rep.Telemetry.Sent, rep.Telemetry.Accepted = st.telemetry.Load(), st.telemetryOK.Load()
	if len(r.pubErrors) > 0 {
		rep.PublishErrors = maps.Clone(r.pubErrors)
	}
	if rep.Handshakes > 0 {
		rep.ResumptionRate = round(float64(rep.Resumed)/float64(rep.Handshakes), 4)
	}
	win := w1.at.Sub(w0.at).Seconds()
	rep.WindowS = round(win, 2)
	if win > 0 {
		rep.PollsPerSecond = round(float64(w1.polls-w0.polls)/win, 1)
	}
	if !w0.server.ok || !w1.server.ok || win <= 0 {
		return rep
	}
	cpu := w1.server.cpu - w0.server.cpu
	srv := &ServerReport{Source: w1.server.source, RSSBaselineMiB: round(s0.rss/(1<<20), 1), RSSEndMiB: round(w1.server.rss/(1<<20), 1),
		CPUSeconds: round(cpu, 3), CoresUsed: round(cpu/win, 3)}
	if n := w1.polls - w0.polls; n > 0 {
		srv.CPUPerPollUS = round(cpu*1e6/float64(n), 1)
	}
	if onlineEnd > 0 {
		if s0.ok {
			srv.KiBPerDevice = round((w1.server.rss-s0.rss)/1024/float64(onlineEnd), 2)
		}
		srv.CPUPerDeviceUSs = round(cpu*1e6/win/float64(onlineEnd), 3)
	}
	rep.Server = srv
	if srv.CPUPerDeviceUSs <= 0 {
		return rep
	}
	p := &Projection{Cadence: cadence(sc), DevicesPerCore: round(1e6/srv.CPUPerDeviceUSs, 0), KiBPerDevice: srv.KiBPerDevice,
		BoxMemoryMiB: sc.Project.BoxMemoryMiB, BoxCores: sc.Project.BoxCores, PlanDevices: sc.Project.Devices}
	p.PlanCores = round(float64(p.PlanDevices)/p.DevicesPerCore, 2)
	boxes := math.Ceil(p.PlanCores / float64(p.BoxCores))
	if p.KiBPerDevice > 0 {
		p.DevicesPerBoxMem = round(float64(p.BoxMemoryMiB)*1024/p.KiBPerDevice, 0)
		p.PlanMemoryGiB = round(float64(p.PlanDevices)*p.KiBPerDevice/(1<<20), 2)
		boxes = max(boxes, math.Ceil(float64(p.PlanDevices)/p.DevicesPerBoxMem))
	}
	p.PlanBoxes = int(max(boxes, 1))
	rep.Projection = p
	return rep
}

func cadence(sc *scenario.Scenario) string {
	d := sc.Devices
	switch {
	case d.Model == scenario.ModelWebSocket || d.Model == scenario.ModelMQTTWS:
		return d.Model + " held sockets"
	case d.Wait > 0:
		return fmt.Sprintf("%s, wait=%d", d.Model, d.Wait)
	default:
		return fmt.Sprintf("%s every %s, TLS %s, resumption %v", d.Model, *d.Interval, d.TLS.Version, *d.TLS.Resumption)
	}
}

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// Brief is one line in the format the former integration/tlsload printed (the
// benchmark scripts parse it): req/s, p99, resumption, errors.
func (rep *Report) Brief() string {
	p99 := time.Duration(rep.Latency.WindowPoll.P99MS * float64(time.Millisecond)).Round(10 * time.Microsecond)
	rate := 0.0
	if rep.WindowS > 0 {
		rate = rep.PollsPerSecond
	}
	return fmt.Sprintf("%.0f req/s  p99 %s  resumed %.1f%%  errors %d", rate, p99, 100*rep.ResumptionRate, rep.Failures)
}

// WriteText writes the human report.
func (rep *Report) WriteText(w io.Writer) {
	sc := rep.Scenario
	fmt.Fprintf(w, "edgeshim-sim: %d devices (%s) → %s for %s\n", rep.Devices, cadence(sc), sc.Target.URL, sc.Duration)
	fmt.Fprintf(w, "  online at end     %d/%d\n", rep.OnlineAtEnd, rep.Devices)
	fmt.Fprintf(w, "  polls             %d (%d ok), %.1f/s over the %.1fs window after ramp-up; failures %d\n", rep.Polls, rep.PollsOK, rep.PollsPerSecond, rep.WindowS, rep.Failures)
	fmt.Fprintf(w, "  TLS handshakes    %d, resumed %.1f%%\n", rep.Handshakes, 100*rep.ResumptionRate)
	fmt.Fprintf(w, "  latency (ms)      %8s %8s %8s %8s %8s %8s\n", "count", "p50", "p90", "p99", "p99.9", "max")
	for _, l := range []struct {
		n string
		s Summary
	}{{"connect", rep.Latency.Connect}, {"handshake", rep.Latency.Handshake}, {"poll", rep.Latency.Poll}, {"publish→device", rep.Latency.Deliver},
		{"handshake (win)", rep.Latency.WindowHandshake}, {"poll (window)", rep.Latency.WindowPoll}} {
		fmt.Fprintf(w, "    %-15s %8d %8.2f %8.2f %8.2f %8.2f %8.2f\n", l.n, l.s.Count, l.s.P50MS, l.s.P90MS, l.s.P99MS, l.s.P999MS, l.s.MaxMS)
	}
	fmt.Fprintf(w, "  status            %s\n", kv(rep.Status))
	fmt.Fprintf(w, "  refusals/errors   %s\n", kv(rep.Refusals))
	if rep.Telemetry.Sent > 0 {
		fmt.Fprintf(w, "  telemetry         %d sent, %d accepted\n", rep.Telemetry.Sent, rep.Telemetry.Accepted)
	}
	if c := rep.Commands; c.Published+c.Failed > 0 {
		fmt.Fprintf(w, "  commands          published %d = delivered %d + lost %d + expired %d; duplicates %d, late %d, publish failed %d, unknown %d, misrouted %d\n",
			c.Published, c.Delivered, c.Lost, c.Expired, c.Duplicates, c.Late, c.Failed, c.Unknown, c.Misrouted)
	}
	for _, e := range rep.Events {
		rec := "not recovered within the run"
		if e.RecoveredAfterS >= 0 {
			rec = fmt.Sprintf("every device back after %.1fs", e.RecoveredAfterS)
		}
		extra := ""
		if e.Error != "" {
			extra = " (command failed: " + e.Error + ")"
		}
		fmt.Fprintf(w, "  event %-7s at %5.1fs: %s%s\n", e.Kind, e.AtS, rec, extra)
	}
	if s := rep.Server; s != nil {
		fmt.Fprintf(w, "  server (%s): RSS %.1f → %.1f MiB; CPU %.2fs = %.2f cores; %.1f µs CPU/poll; %.2f KiB and %.1f µs CPU/s per held device\n",
			s.Source, s.RSSBaselineMiB, s.RSSEndMiB, s.CPUSeconds, s.CoresUsed, s.CPUPerPollUS, s.KiBPerDevice, s.CPUPerDeviceUSs)
	}
	if p := rep.Projection; p != nil {
		fmt.Fprintf(w, "  capacity: at this cadence (%s): %.0f devices per core, %.2f KiB per held device → %.0f devices per %d MiB box (memory)\n",
			p.Cadence, p.DevicesPerCore, p.KiBPerDevice, p.DevicesPerBoxMem, p.BoxMemoryMiB)
		fmt.Fprintf(w, "  for %d devices: %.1f cores, %.1f GiB → %d box(es) of %d cores / %d MiB\n",
			p.PlanDevices, p.PlanCores, p.PlanMemoryGiB, p.PlanBoxes, p.BoxCores, p.BoxMemoryMiB)
	}
}

func kv(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s:%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}
