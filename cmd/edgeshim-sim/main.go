// Command edgeshim-sim simulates a fleet of polling devices against an
// edge (edgeshim, or any HTTPS poll endpoint: nginx, Pushpin), publishes
// commands to the broker behind it and matches what the devices receive,
// injects restarts and reconnect storms, and reports latency, refusals,
// the server's CPU and memory and a capacity projection. It is a
// development and planning tool, not part of the production image. Run
// `edgeshim-sim -h` for every option; a YAML scenario file (-scenario)
// sets the same fields, and flags given beside it win.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/scenario"
	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/sim"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// prog are the options that are not part of a scenario.
type prog struct {
	scenarioFile string
	jsonOut      string
	brief        bool
	genTokens    string
	genCA        string
	progress     string
	target       pushpinTarget
}

// ptrValue sets a pointer field of the scenario from a flag.
type ptrValue[T any] struct {
	p     **T
	parse func(string) (T, error)
	bool  bool
}

func (v *ptrValue[T]) String() string {
	if v == nil || v.p == nil || *v.p == nil {
		return ""
	}
	return fmt.Sprint(**v.p)
}

func (v *ptrValue[T]) Set(s string) error {
	x, err := v.parse(s)
	if err != nil {
		return err
	}
	*v.p = &x
	return nil
}

func (v *ptrValue[T]) IsBoolFlag() bool { return v.bool }

func durPtr(p **time.Duration) flag.Value {
	return &ptrValue[time.Duration]{p: p, parse: time.ParseDuration}
}
func intPtr(p **int) flag.Value   { return &ptrValue[int]{p: p, parse: strconv.Atoi} }
func boolPtr(p **bool) flag.Value { return &ptrValue[bool]{p: p, parse: strconv.ParseBool, bool: true} }

// eventFlag appends "AT:COMMAND" restarts or "AT[:ignore]" storms.
func eventFlag(s *scenario.Scenario, storm bool) func(string) error {
	return func(v string) error {
		at, rest, _ := strings.Cut(v, ":")
		d, err := time.ParseDuration(at)
		if err != nil {
			return fmt.Errorf("want AT:..., AT a duration: %w", err)
		}
		if storm {
			var obey *bool
			switch rest {
			case "":
			case "ignore", "obey":
				b := rest == "obey"
				obey = &b
			default:
				return fmt.Errorf("want AT, AT:obey or AT:ignore")
			}
			s.Events = append(s.Events, scenario.Event{At: d, Storm: &scenario.Storm{ObeyRetryAfter: obey}})
			return nil
		}
		if rest == "" {
			return fmt.Errorf("want AT:COMMAND")
		}
		s.Events = append(s.Events, scenario.Event{At: d, Restart: rest})
		return nil
	}
}

// flags binds every option; the defaults shown are the scenario's
// (applied after the file and the flags).
func flags(s *scenario.Scenario, p *prog, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("edgeshim-sim", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, `edgeshim-sim simulates a polling fleet against an edge and plans capacity.

Usage: edgeshim-sim [-scenario FILE] [flags]
       edgeshim-sim -gen-tokens FILE -devices N [-prefix P] [-secret S]
       edgeshim-sim -gen-ca DIR

A scenario file (YAML, strictly decoded; see integration/scenarios/) sets
the same fields as the flags; flags given on the command line win. Sends to
any address it is given: point it only at servers you run.

Flags:
`)
		fs.PrintDefaults()
	}
	d := &s.Devices
	c := &s.Commands
	fs.StringVar(&p.scenarioFile, "scenario", "", "YAML scenario file")
	fs.StringVar(&p.jsonOut, "json", "", "write the report as JSON to this file (- for stdout, replacing the text report)")
	fs.BoolVar(&p.brief, "brief", false, "print one line instead of the report: 'REQ req/s  p99 D  resumed P%  errors N' (integration/bench_proxy.sh parses it)")
	fs.StringVar(&p.target.kind, "target", "edgeshim", "what -url points at: edgeshim (commands over MQTT to -broker), or pushpin (the sim runs a GRIP origin on -grip-origin and publishes commands to -pushpin-publish; -topic names the channel, default d-{device})")
	fs.StringVar(&p.target.origin, "grip-origin", "127.0.0.1:28080", "-target pushpin: address of the sim's GRIP origin (Pushpin's route must point here)")
	fs.StringVar(&p.target.publish, "pushpin-publish", "http://127.0.0.1:5561/publish/", "-target pushpin: Pushpin's HTTP publish endpoint")
	fs.StringVar(&p.progress, "progress", "auto", "live progress line on stderr: auto (when stderr is a terminal), on, off")
	fs.StringVar(&p.genTokens, "gen-tokens", "", "write the bridge's tokens file (device: hex sha256(token)) for -devices, -prefix, -secret to FILE and exit")
	fs.StringVar(&p.genCA, "gen-ca", "", "write a device CA (ca.pem, ca-key.pem) into DIR and exit; use with -cert-ca DIR and the server's client_auth.ca")

	fs.StringVar(&s.Target.URL, "url", s.Target.URL, "poll URL template, {device} is the device id (default https://127.0.0.1:8443/devices/{device}/commands)")
	fs.StringVar(&s.Target.TelemetryURL, "telemetry-url", s.Target.TelemetryURL, "telemetry POST URL template (default: -url with /commands → /telemetry)")
	fs.StringVar(&s.Target.WSURL, "ws-url", s.Target.WSURL, "WebSocket URL template for -model websocket|mqtt-ws (default wss://HOST/devices/{device}/ws, or wss://HOST/mqtt)")
	fs.StringVar(&s.Target.ServerName, "server-name", s.Target.ServerName, "TLS server name (default localhost)")
	fs.StringVar(&s.Target.CA, "ca", s.Target.CA, "PEM roots to verify the server with (default: not verified)")

	fs.IntVar(&d.Count, "devices", d.Count, "number of devices (default 100)")
	fs.StringVar(&d.Prefix, "prefix", d.Prefix, "device id prefix: PREFIX0, PREFIX1, ... (default sim-)")
	fs.StringVar(&d.Model, "model", d.Model, "device model: newconn (a new TLS connection per poll), keepalive, longpoll (wait=N, re-poll on answer), websocket (the bridge's device WebSocket), mqtt-ws (MQTT over WebSocket) (default newconn)")
	fs.Var(durPtr(&d.Interval), "interval", "time between polls for newconn/keepalive; 0 = closed loop, poll again at once (default 60s)")
	fs.DurationVar(&d.Jitter, "jitter", d.Jitter, "random extra delay added to each interval, uniform in [0, jitter) (default 0)")
	fs.IntVar(&d.Wait, "wait", d.Wait, "long-poll wait in seconds (?wait=N); longpoll, or newconn for a new connection per held poll (default 55 for longpoll)")
	fs.StringVar(&d.TLS.Version, "tls", d.TLS.Version, "highest TLS version offered: 1.2 or 1.3 (default 1.3)")
	fs.Var(boolPtr(&d.TLS.Resumption), "resumption", "resume TLS sessions (a session cache per device) (default true)")
	fs.BoolVar(&d.TLS.PQ, "pq", d.TLS.PQ, "offer Go's hybrid post-quantum key share X25519MLKEM768; otherwise only X25519 and P-256, as devices do (default false)")
	fs.BoolVar(&d.Identity.Tokens, "tokens", d.Identity.Tokens, "send Authorization: Bearer TOKEN (tokens derived from -secret, as -gen-tokens writes) (default false)")
	fs.StringVar(&d.Identity.Secret, "secret", d.Identity.Secret, "secret the device tokens derive from (default edgeshim-sim)")
	fs.StringVar(&d.Identity.CertCA, "cert-ca", d.Identity.CertCA, "directory with ca.pem and ca-key.pem (-gen-ca): each device presents a client certificate CN=device (default none)")
	fs.DurationVar(&d.Telemetry.Interval, "telemetry-interval", d.Telemetry.Interval, "telemetry POST per device every this long, on a new connection; 0 = none (default 0)")
	fs.IntVar(&d.Telemetry.Size, "telemetry-size", d.Telemetry.Size, "telemetry message size in bytes (default 64)")
	fs.Float64Var(&d.Ramp, "ramp", d.Ramp, "devices started per second (default 1000); devices*1/interval spreads the polls evenly")
	fs.Var(intPtr(&d.Sources), "sources", "spread devices over source addresses 127.0.0.2..(1+N), bound in the dialer; 0 = do not bind (default 8 for a 127.x target, else 0)")
	fs.DurationVar(&d.Timeout, "timeout", d.Timeout, "bound on a connect, a handshake, a poll beyond its wait (default 10s)")
	fs.DurationVar(&d.Backoff, "backoff", d.Backoff, "retry delay after a failure or a refusal without Retry-After, ±50% (default 1s)")
	fs.Var(boolPtr(&d.ObeyRetryAfter), "obey-retry-after", "refused devices wait Retry-After (default true)")

	fs.DurationVar(&s.Duration, "duration", s.Duration, "run time from the first device's start (default 60s)")
	fs.DurationVar(&s.Drain, "drain", s.Drain, "devices keep polling this long after -duration so commands in flight arrive (default 5s with commands, else 0)")

	fs.StringVar(&c.Broker, "broker", c.Broker, "mqtt://host:port to publish commands to (QoS 1); empty = no commands")
	fs.StringVar(&c.Topic, "topic", c.Topic, "command topic template (default devices/{device}/commands)")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "commands per second to random devices that have been online (default 0)")
	fs.BoolVar(&c.PerDevice, "per-device", c.PerDevice, "publish one command to every device once all were online, at -rate (or 1000/s) (default false)")
	fs.DurationVar(&c.Start, "commands-start", c.Start, "start publishing at this time into the run (default 0)")
	fs.DurationVar(&c.Stop, "commands-stop", c.Stop, "stop publishing at this time into the run (default -duration)")
	fs.DurationVar(&c.Late, "late", c.Late, "a command first received later than this after its publish is late (default 5s)")
	fs.DurationVar(&c.Expiry, "expiry", c.Expiry, "MQTT message expiry; undelivered past it counts as expired, not lost (default 0: none)")
	fs.IntVar(&c.Size, "command-size", c.Size, "command payload size in bytes (default 48)")

	fs.Func("restart", "event `AT:COMMAND`: run COMMAND with sh -c at AT into the run (e.g. '20s:kill -9 $(cat edge.pid); ./restart-edge.sh'); repeatable", eventFlag(s, false))
	fs.Func("storm", "event `AT[:obey|ignore]`: every device drops its connection at AT and reconnects at once, obeying or ignoring Retry-After (default: -obey-retry-after); repeatable", eventFlag(s, true))

	fs.IntVar(&s.Server.PID, "pid", s.Server.PID, "server process id: read its CPU and RSS, and its child processes' (summed: Pushpin's runner and its condure, pushpin-proxy, pushpin-handler), from /proc/PID/stat and status")
	fs.StringVar(&s.Server.Metrics, "metrics", s.Server.Metrics, "server's Prometheus /metrics URL: read process_cpu_seconds_total and process_resident_memory_bytes (survives restarts)")
	fs.IntVar(&s.Project.Devices, "project-devices", s.Project.Devices, "fleet size for the capacity projection (default 250000)")
	fs.IntVar(&s.Project.BoxMemoryMiB, "box-memory-mib", s.Project.BoxMemoryMiB, "memory of one box for the projection, MiB (default 8192)")
	fs.IntVar(&s.Project.BoxCores, "box-cores", s.Project.BoxCores, "cores of one box for the projection (default 4)")
	return fs
}

func run(args []string, stdout, stderr io.Writer) int {
	// First pass: find -scenario, so the file is read before the flags
	// that override it.
	var p prog
	s := &scenario.Scenario{}
	if err := flags(s, &p, io.Discard).Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			flags(s, &p, stderr).Usage()
			return 0
		}
		fmt.Fprintln(stderr, "edgeshim-sim:", err)
		return 2
	}
	s = &scenario.Scenario{}
	if p.scenarioFile != "" {
		data, err := os.ReadFile(p.scenarioFile)
		if err != nil {
			fmt.Fprintln(stderr, "edgeshim-sim:", err)
			return 2
		}
		if err := s.Decode(data); err != nil {
			fmt.Fprintf(stderr, "edgeshim-sim: %s: %v\n", p.scenarioFile, err)
			return 2
		}
	}
	if err := flags(s, &p, stderr).Parse(args); err != nil {
		return 2
	}
	if err := p.target.defaults(s); err != nil {
		fmt.Fprintln(stderr, "edgeshim-sim:", err)
		return 2
	}
	s.WithDefaults()
	if err := s.Validate(); err != nil {
		fmt.Fprintln(stderr, "edgeshim-sim:", err)
		return 2
	}
	if p.genCA != "" {
		if err := sim.GenCA(p.genCA); err != nil {
			fmt.Fprintln(stderr, "edgeshim-sim:", err)
			return 1
		}
		return 0
	}
	if p.genTokens != "" {
		f, err := os.Create(p.genTokens)
		if err == nil {
			err = sim.WriteTokens(f, s.Devices.Prefix, s.Devices.Identity.Secret, s.Devices.Count)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			fmt.Fprintln(stderr, "edgeshim-sim:", err)
			return 1
		}
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o := sim.Options{Log: stderr}
	if p.progress == "on" || (p.progress == "auto" && isTerminal(os.Stderr)) {
		o.Progress = stderr
	}
	stopTarget, err := p.target.start(s, &o)
	if err != nil {
		fmt.Fprintln(stderr, "edgeshim-sim:", err)
		return 1
	}
	rep, err := sim.Run(ctx, s, o)
	stopTarget()
	if rep == nil {
		fmt.Fprintln(stderr, "edgeshim-sim:", err)
		return 1
	}
	switch {
	case p.brief:
		fmt.Fprintln(stdout, rep.Brief())
	case p.jsonOut != "-":
		rep.WriteText(stdout)
	}
	if p.jsonOut != "" {
		w := stdout
		if p.jsonOut != "-" {
			f, ferr := os.Create(p.jsonOut)
			if ferr != nil {
				fmt.Fprintln(stderr, "edgeshim-sim:", ferr)
				return 1
			}
			defer f.Close()
			w = f
		}
		if werr := rep.WriteJSON(w); werr != nil {
			fmt.Fprintln(stderr, "edgeshim-sim:", werr)
			return 1
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "edgeshim-sim:", err)
		return 1
	}
	if rep.PollsOK == 0 {
		fmt.Fprintln(stderr, "edgeshim-sim: no successful poll")
		return 1
	}
	return 0
}

// isTerminal: f is a character device (a terminal, for stderr).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
