package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	simOnce sync.Once
	simBin  string
	simErr  error
)

// buildSim builds cmd/edgeshim-sim once per test binary.
func buildSim(t testing.TB) string {
	t.Helper()
	simOnce.Do(func() {
		dir, err := os.MkdirTemp("", "edgeshim-sim-")
		if err != nil {
			simErr = err
			return
		}
		simBin = filepath.Join(dir, "edgeshim-sim")
		out, err := exec.Command("go", "build", "-o", simBin, "../cmd/edgeshim-sim").CombinedOutput()
		if err != nil {
			simErr = fmt.Errorf("build edgeshim-sim: %v\n%s", err, out)
		}
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
	return simBin
}

// simReport is the part of edgeshim-sim's -json report the tests read.
type simReport struct {
	PollsOK  int64            `json:"polls_ok"`
	Refusals map[string]int64 `json:"refusals"`
	Commands struct {
		Published, Delivered, Duplicates, Lost, Expired, Unknown, Misrouted int64
		Failed                                                              int64 `json:"publish_failed"`
	} `json:"commands"`
	Events []struct {
		Kind            string  `json:"kind"`
		Error           string  `json:"error"`
		RecoveredAfterS float64 `json:"recovered_after_s"`
	} `json:"events"`
	Server *struct {
		CPUSeconds float64 `json:"cpu_seconds"`
		RSSEndMiB  float64 `json:"rss_end_mib"`
	} `json:"server"`
	Latency struct {
		Deliver struct {
			Count uint64 `json:"count"`
		} `json:"publish_to_device"`
	} `json:"latency"`
}

// TestSimRestartNoCommandLost runs edgeshim-sim against mosquitto and a
// real edgeshim (token identity from the sim's generated tokens file):
// long-polling devices, commands published at a rate, and edgeshim killed
// with SIGKILL by the sim's restart event and started again by the test.
// The sim's report must balance (published = delivered + lost + expired),
// lose nothing (the bridge is at-least-once), agree with what the broker
// saw and with edgeshim's delivery counter, and see the fleet recover.
func TestSimRestartNoCommandLost(t *testing.T) {
	sim := buildSim(t)
	m := startMosquitto(t, "")
	watcher := newMQTTPeer(t, m.Addr(), "sim-watcher", true)
	seen := watcher.subscribe("devices/+/commands")
	var brokerCount atomic.Int64
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-seen:
				brokerCount.Add(1)
			case <-watchCtx.Done():
				return
			}
		}
	}()
	defer func() { stopWatch(); <-watchDone }()

	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.yaml")
	const devices = 40
	if out, err := exec.Command(sim, "-gen-tokens", tokens, "-devices", fmt.Sprint(devices), "-prefix", "it-").CombinedOutput(); err != nil {
		t.Fatalf("gen-tokens: %v\n%s", err, out)
	}
	https, admin := freePort(t), freePort(t)
	cfg := bridgeConfig(m.URL(), fmt.Sprintf("{from: token, tokens: %s}", tokens), "")
	cfg = strings.Replace(cfg, `{https: "127.0.0.1:0", admin: "127.0.0.1:0"}`, fmt.Sprintf(`{https: "127.0.0.1:%d", admin: "127.0.0.1:%d"}`, https, admin), 1)
	cfg = strings.Replace(cfg, "log: {level: debug}", "log: {level: info}", 1)
	e := startEdgeshim(t, cfg, EdgeOptions{Dir: dir})

	report := filepath.Join(dir, "report.json")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sim,
		"-url", fmt.Sprintf("https://127.0.0.1:%d/devices/{device}/commands", https),
		"-devices", fmt.Sprint(devices), "-prefix", "it-", "-tokens", "-model", "longpoll", "-wait", "10",
		"-ramp", "200", "-duration", "24s", "-drain", "10s", "-backoff", "500ms",
		"-broker", m.URL(), "-rate", "20", "-commands-start", "2s", "-commands-stop", "18s", "-late", "15s",
		"-restart", fmt.Sprintf("8s:kill -9 %d", e.cmd.Process.Pid),
		"-metrics", fmt.Sprintf("http://127.0.0.1:%d/metrics", admin),
		"-progress", "off", "-json", report)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	simDone := make(chan error, 1)
	go func() { simDone <- cmd.Wait() }()

	// The sim kills edgeshim at 8 s; the test starts it again at once, on
	// the same ports.
	select {
	case <-e.exited:
	case err := <-simDone:
		t.Fatalf("sim ended before the restart: %v\n%s", err, out.String())
	case <-time.After(60 * time.Second):
		t.Fatal("the sim's restart event did not kill edgeshim")
	}
	e2 := startEdgeshim(t, cfg, EdgeOptions{Dir: dir})
	if err := <-simDone; err != nil {
		t.Fatalf("sim: %v\n%s", err, out.String())
	}
	t.Logf("sim output:\n%s", out.String())

	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rep simReport
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	c := rep.Commands
	if c.Published < 100 {
		t.Fatalf("only %d commands published; want about 320", c.Published)
	}
	if c.Published != c.Delivered+c.Lost+c.Expired {
		t.Errorf("published %d != delivered %d + lost %d + expired %d", c.Published, c.Delivered, c.Lost, c.Expired)
	}
	if c.Lost != 0 || c.Expired != 0 {
		t.Errorf("lost %d, expired %d: the at-least-once bridge must deliver every command", c.Lost, c.Expired)
	}
	if c.Unknown != 0 || c.Misrouted != 0 {
		t.Errorf("unknown %d, misrouted %d", c.Unknown, c.Misrouted)
	}
	if uint64(c.Delivered) != rep.Latency.Deliver.Count {
		t.Errorf("publish→device histogram has %d samples for %d delivered", rep.Latency.Deliver.Count, c.Delivered)
	}
	// The broker saw every command the sim counts as published.
	deadline := time.Now().Add(10 * time.Second)
	for brokerCount.Load() < c.Published+c.Failed && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if b := brokerCount.Load(); b < c.Published {
		t.Errorf("broker passed on %d commands, sim counts %d published", b, c.Published)
	}
	// Devices received at least what the restarted edgeshim says it wrote
	// (the killed one's count died with it).
	if d := e2.Metric("edgeshim_bridge_commands_delivered_total"); d == 0 || float64(c.Delivered+c.Duplicates) < d {
		t.Errorf("edgeshim delivered %v after the restart; devices received %d (+%d duplicates)", d, c.Delivered, c.Duplicates)
	}
	if len(rep.Events) != 1 || rep.Events[0].Kind != "restart" || rep.Events[0].Error != "" {
		t.Fatalf("events = %+v, want one successful restart", rep.Events)
	}
	if rep.Events[0].RecoveredAfterS < 0 {
		t.Errorf("the fleet did not recover after the restart")
	}
	var connErrs int64
	for _, k := range []string{"refused", "reset", "eof"} {
		connErrs += rep.Refusals[k]
	}
	if connErrs == 0 {
		t.Errorf("no connection error seen across a SIGKILL: refusals %v", rep.Refusals)
	}
	if rep.Server == nil || rep.Server.CPUSeconds <= 0 || rep.Server.RSSEndMiB <= 0 {
		t.Errorf("server figures missing from /metrics: %+v", rep.Server)
	}
}
