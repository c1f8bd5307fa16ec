package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// startPushpin runs Pushpin (its runner, which starts condure, zurl,
// pushpin-proxy and pushpin-handler) unprivileged from a config in a temp
// dir: plain HTTP on httpPort, the publish endpoint on publishPort, every
// route to origin, ZeroMQ over ipc sockets in the dir. It returns the
// runner's pid; the test's cleanup stops it (SIGTERM, the runner stops its
// children) and waits.
func startPushpin(t testing.TB, httpPort, publishPort int, origin string) int {
	t.Helper()
	return startPushpinWith(t, httpPort, publishPort, origin, pushpinOptions{maxConn: 1000, logLevel: 2})
}

// pushpinOptions size Pushpin for a benchmark: the client connections
// condure takes, the handler's publish rate (0: Pushpin's default) and
// the log level (2 logs every request, 1 only errors).
type pushpinOptions struct {
	maxConn, messageRate, logLevel int
}

// startPushpinWith is startPushpin sized by o.
func startPushpinWith(t testing.TB, httpPort, publishPort int, origin string, o pushpinOptions) int {
	t.Helper()
	bin := requireTool(t, "pushpin")
	for _, b := range []string{"condure", "zurl", "pushpin-proxy", "pushpin-handler"} {
		requireTool(t, b)
	}
	dir := t.TempDir()
	for _, d := range []string{"run", "log"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`[global]
include={libdir}/internal.conf
rundir=%[1]s/run
ipc_prefix=it-
port_offset=0
[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:%[2]d
logdir=%[1]s/log
log_level=%[5]d
client_maxconn=%[4]d
[proxy]
routesfile=routes
sig_key=integration-not-secret
updates_check=off
zurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in
zurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream
zurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out
[handler]
push_in_spec=ipc://{rundir}/{ipc_prefix}push-in
push_in_sub_specs=ipc://{rundir}/{ipc_prefix}push-in-sub
push_in_http_addr=127.0.0.1
push_in_http_port=%[3]d
stats_spec=ipc://{rundir}/{ipc_prefix}stats
command_spec=ipc://{rundir}/{ipc_prefix}command
`, dir, httpPort, publishPort, o.maxConn, o.logLevel)
	if o.messageRate > 0 { // [handler] is the last section
		conf += fmt.Sprintf("message_rate=%d\nmessage_hwm=%d\n", o.messageRate, 2*o.messageRate)
	}
	if err := os.WriteFile(filepath.Join(dir, "pushpin.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "routes"), []byte("* "+origin+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "pushpin.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "pushpin.conf"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); out.Close(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			for _, f := range []string{"pushpin.out", "log/pushpin-proxy.log", "log/pushpin-handler.log", "log/condure.log"} {
				data, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("%s:\n%s", f, data)
			}
		}
	})
	waitTCP(t, "127.0.0.1:"+strconv.Itoa(httpPort), 15*time.Second)
	waitTCP(t, "127.0.0.1:"+strconv.Itoa(publishPort), 15*time.Second)
	return cmd.Process.Pid
}

// TestSimPushpinTarget runs edgeshim-sim's Pushpin target against a real
// Pushpin: the sim's GRIP origin answers each poll with a hold on the
// device's channel, the sim publishes one command per device to Pushpin's
// publish endpoint once all devices hold, and Pushpin completes the held
// polls with them. The report must balance and match; Pushpin's processes
// are sampled through the runner's pid.
func TestSimPushpinTarget(t *testing.T) {
	sim := buildSim(t)
	httpPort, publishPort, originPort := freePort(t), freePort(t), freePort(t)
	origin := "127.0.0.1:" + strconv.Itoa(originPort)
	pid := startPushpin(t, httpPort, publishPort, origin)

	dir := t.TempDir()
	report := filepath.Join(dir, "report.json")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const devices = 3
	cmd := exec.CommandContext(ctx, sim, "-target", "pushpin",
		"-url", fmt.Sprintf("http://127.0.0.1:%d/devices/{device}/commands", httpPort),
		"-grip-origin", origin, "-pushpin-publish", fmt.Sprintf("http://127.0.0.1:%d/publish/", publishPort),
		"-devices", strconv.Itoa(devices), "-prefix", "pp-", "-model", "longpoll", "-wait", "20",
		"-duration", "6s", "-drain", "4s", "-per-device", "-commands-start", "2s",
		"-pid", strconv.Itoa(pid), "-progress", "off", "-json", report)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("edgeshim-sim: %v\n%s", err, out)
	}
	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rep simReport
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	c := rep.Commands
	if c.Published != devices || c.Failed != 0 {
		t.Errorf("published %d (failed %d), want %d, one per device", c.Published, c.Failed, devices)
	}
	if c.Delivered < 1 || c.Delivered+c.Lost+c.Expired != c.Published {
		t.Errorf("delivered %d, lost %d, expired %d of %d published: want at least one delivered through a hold, and a balance", c.Delivered, c.Lost, c.Expired, c.Published)
	}
	if c.Misrouted != 0 || c.Unknown != 0 || c.Duplicates != 0 {
		t.Errorf("misrouted %d, unknown %d, duplicates %d", c.Misrouted, c.Unknown, c.Duplicates)
	}
	m := regexp.MustCompile(`grip origin answered (\d+) polls with a hold, refused (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no grip origin line in the sim's output:\n%s", out)
	}
	if holds, _ := strconv.Atoi(string(m[1])); holds < devices || string(m[2]) != "0" {
		t.Errorf("grip origin: %s holds, %s refused; want >= %d holds, none refused", m[1], m[2], devices)
	}
	// The runner alone is a few MiB; with condure, zurl, proxy and
	// handler summed it is well above.
	if rep.Server == nil || rep.Server.RSSEndMiB < 20 {
		t.Errorf("server sample of pushpin's process tree: %+v", rep.Server)
	}
	t.Logf("pushpin: %d of %d delivered, %d lost; RSS %.1f MiB", c.Delivered, c.Published, c.Lost, rep.Server.RSSEndMiB)
}
