// Package sim runs a simulated fleet of HTTPS-polling (or WebSocket, or
// MQTT-over-WebSocket) devices against an edge, publishes commands to the
// broker behind it, matches what the devices receive, injects restarts and
// reconnect storms, and reports latency, refusals, the server's CPU and
// memory and a capacity projection. It is the library of cmd/edgeshim-sim.
package sim

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/match"
	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/scenario"
)

// Options are the run's collaborators.
type Options struct {
	// Progress receives a live progress line every second ("\r"-rewritten);
	// nil for none.
	Progress io.Writer
	// Log receives event output (restart commands' output); nil discards.
	Log io.Writer
	// Publisher publishes commands; nil uses paho.golang to
	// Commands.Broker.
	Publisher Publisher
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// runner is one run's state.
type runner struct {
	sc     *scenario.Scenario
	o      Options
	now    func() time.Time
	st     *stats
	m      *match.Matcher
	issuer *certIssuer
	runID  string
	wg     sync.WaitGroup // devices and their helpers

	mu        sync.Mutex
	sctx      context.Context
	scancel   context.CancelFunc
	obey      bool
	everOn    []string
	devices   []*device
	launched  int
	seq       int64
	pubErrors map[string]int64
}

// stormCtx returns the current storm generation: it is cancelled when the
// next storm starts.
func (r *runner) stormCtx() (context.Context, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sctx, r.obey
}

// storm drops every connection: all devices reconnect at once.
func (r *runner) storm(ctx context.Context, obey bool) {
	r.mu.Lock()
	old := r.scancel
	r.sctx, r.scancel = context.WithCancel(ctx)
	r.obey = obey
	r.mu.Unlock()
	old()
}

// seen records a device's first time online.
func (r *runner) seen(d *device) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.everOn = append(r.everOn, d.id)
}

// received matches the command ids in what a device got.
func (r *runner) received(d *device, body []byte) {
	scanIDs(body, func(id string) {
		if lat, first := r.m.Received(id, d.id); first {
			r.st.deliver.add(lat)
		}
	})
}

func (r *runner) expand(tmpl, dev string) *url.URL {
	u, _ := url.Parse(strings.ReplaceAll(tmpl, "{device}", url.PathEscape(dev)))
	return u
}

func (r *runner) telemetryURL(dev string) *url.URL { return r.expand(r.sc.Target.TelemetryURL, dev) }
func (r *runner) wsURL(dev string) *url.URL        { return r.expand(r.sc.Target.WSURL, dev) }

// tlsConfig is the devices' common TLS configuration.
func tlsConfig(sc *scenario.Scenario) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: sc.Target.ServerName, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	if sc.Devices.TLS.Version == "1.2" {
		cfg.MaxVersion = tls.VersionTLS12
	}
	if !sc.Devices.TLS.PQ {
		cfg.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	}
	if sc.Target.CA != "" {
		pem, err := os.ReadFile(sc.Target.CA)
		if err != nil {
			return nil, fmt.Errorf("target.ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("target.ca: %s: no certificate", sc.Target.CA)
		}
		cfg.RootCAs = pool
	} else {
		cfg.InsecureSkipVerify = true // a load tool against a test server; -ca verifies
	}
	return cfg, nil
}

// Run runs the scenario until its duration and drain have passed (or ctx
// ends) and returns the report.
func Run(ctx context.Context, sc *scenario.Scenario, o Options) (*Report, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	base, err := tlsConfig(sc)
	if err != nil {
		return nil, err
	}
	pollTmpl, err := url.Parse(strings.ReplaceAll(sc.Target.URL, "{device}", "x"))
	if err != nil {
		return nil, fmt.Errorf("target.url: %w", err)
	}
	if pollTmpl.Scheme == "http" {
		base = nil
	}
	idb := make([]byte, 3)
	rand.Read(idb)
	r := &runner{sc: sc, o: o, now: o.Now, st: newStats(), runID: hex.EncodeToString(idb),
		m: match.New(o.Now, sc.Commands.Late, sc.Commands.Expiry), obey: *sc.Devices.ObeyRetryAfter, pubErrors: map[string]int64{}}
	if sc.Devices.Identity.CertCA != "" {
		if r.issuer, err = loadIssuer(sc.Devices.Identity.CertCA); err != nil {
			return nil, err
		}
	}
	pub := o.Publisher
	if pub == nil && sc.Commands.Broker != "" && (sc.Commands.Rate > 0 || sc.Commands.PerDevice) {
		if pub, err = NewPahoPublisher(sc.Commands.Broker, "edgeshim-sim-"+r.runID); err != nil {
			return nil, fmt.Errorf("commands.broker: %w", err)
		}
	}
	if pub != nil {
		defer pub.Close()
	}

	start := r.now()
	runCtx, cancel := context.WithTimeout(ctx, sc.Duration+sc.Drain)
	defer cancel()
	r.sctx, r.scancel = context.WithCancel(runCtx)
	defer func() { r.mu.Lock(); r.scancel(); r.mu.Unlock() }()

	var aux sync.WaitGroup // helpers: sampler, events, publisher, monitor
	auxCtx, auxCancel := context.WithCancel(runCtx)
	defer func() { auxCancel(); aux.Wait() }()

	smp := newSampler(sc.Server.PID, sc.Server.Metrics)
	var s0 serverSample
	if smp != nil {
		s0 = smp.sample(ctx)
		aux.Go(func() { smp.run(auxCtx) })
	}

	// Devices start at the ramp rate.
	launchDone := make(chan struct{})
	aux.Go(func() {
		defer close(launchDone)
		for i := range sc.Devices.Count {
			at := start.Add(time.Duration(float64(i) / sc.Devices.Ramp * float64(time.Second)))
			if w := time.Until(at); w > 0 {
				select {
				case <-runCtx.Done():
					return
				case <-time.After(w):
				}
			} else if runCtx.Err() != nil {
				return
			}
			d := r.newDevice(i, base)
			r.mu.Lock()
			r.devices = append(r.devices, d)
			r.launched++
			r.mu.Unlock()
			r.wg.Go(func() { d.run(runCtx) })
		}
	})

	events := make([]EventResult, len(sc.Events))
	var evMu sync.Mutex
	for i, ev := range sc.Events {
		aux.Go(func() {
			t := time.NewTimer(time.Until(start.Add(ev.At)))
			defer t.Stop()
			select {
			case <-auxCtx.Done():
				return
			case <-t.C:
			}
			res := EventResult{AtS: ev.At.Seconds(), RecoveredAfterS: -1}
			at := r.now()
			if ev.Storm != nil {
				res.Kind = "storm"
				r.storm(runCtx, *ev.Storm.ObeyRetryAfter)
			} else {
				res.Kind, res.Command = "restart", ev.Restart
				cmd := exec.CommandContext(auxCtx, "sh", "-c", ev.Restart)
				cmd.Stdout, cmd.Stderr = o.Log, o.Log
				t0 := time.Now()
				if err := cmd.Run(); err != nil {
					res.Error = err.Error()
				}
				res.CommandS = time.Since(t0).Seconds()
			}
			fmt.Fprintf(o.Log, "edgeshim-sim: %s at %s\n", res.Kind, ev.At)
			evMu.Lock()
			events[i] = res
			evMu.Unlock()
			// Recovery: every device had a successful poll (or session) since.
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-auxCtx.Done():
					return
				case <-tick.C:
				}
				if r.allOKSince(at) {
					evMu.Lock()
					events[i].RecoveredAfterS = r.now().Sub(at).Seconds()
					evMu.Unlock()
					return
				}
			}
		})
	}

	if pub != nil {
		aux.Go(func() { r.publishLoop(auxCtx, start, pub, launchDone) })
	}
	if o.Progress != nil {
		aux.Go(func() { r.progress(auxCtx, start) })
	}

	// The measurement window: from all devices launched to Duration.
	var w0, w1 window
	select {
	case <-launchDone:
	case <-runCtx.Done():
	}
	// ... and every device online (or one timeout more), so that the
	// window measures the steady state, not the ramp.
	settle := time.Now().Add(sc.Devices.Timeout)
	for r.st.online.Load() < int64(sc.Devices.Count) && time.Now().Before(settle) && time.Now().Before(start.Add(sc.Duration)) {
		select {
		case <-time.After(20 * time.Millisecond):
		case <-runCtx.Done():
		}
		if runCtx.Err() != nil {
			break
		}
	}
	w0 = r.window(ctx, smp)
	r.st.inWindow.Store(true)
	select {
	case <-time.After(time.Until(start.Add(sc.Duration))):
	case <-ctx.Done():
	}
	w1 = r.window(ctx, smp)
	r.st.inWindow.Store(false)
	onlineEnd := r.st.online.Load()
	<-runCtx.Done()
	<-launchDone // no device starts after this: r.wg.Wait is safe
	r.wg.Wait()
	auxCancel()
	aux.Wait()
	counts := r.m.Finish()
	evMu.Lock()
	defer evMu.Unlock()
	rep := r.report(start, s0, w0, w1, onlineEnd, counts, events)
	if ctx.Err() != nil {
		return rep, fmt.Errorf("run interrupted: %w", ctx.Err())
	}
	return rep, nil
}

func (r *runner) newDevice(i int, base *tls.Config) *device {
	sc := r.sc
	d := &device{r: r, idx: i, id: DeviceID(sc.Devices.Prefix, i)}
	if base != nil {
		d.tls = base.Clone()
		if *sc.Devices.TLS.Resumption {
			d.tls.ClientSessionCache = tls.NewLRUClientSessionCache(1)
		}
	}
	if n := *sc.Devices.Sources; n > 0 {
		d.local = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%n))}
	}
	d.poll = r.expand(sc.Target.URL, d.id)
	if sc.Devices.Wait > 0 {
		q := d.poll.Query()
		q.Set("wait", strconv.Itoa(sc.Devices.Wait))
		d.poll.RawQuery = q.Encode()
	}
	d.head = d.request("GET", d.poll, nil, sc.Devices.Model == scenario.ModelNewConn)
	if sc.Devices.Model == scenario.ModelLongPoll {
		// The first poll on each connection does not wait: the device
		// checks in (its session is up) and then holds.
		d.hello = d.request("GET", r.expand(sc.Target.URL, d.id), nil, false)
	}
	return d
}

// allOKSince: every launched device succeeded after t.
func (r *runner) allOKSince(t time.Time) bool {
	r.mu.Lock()
	devs := r.devices
	r.mu.Unlock()
	if len(devs) < r.sc.Devices.Count {
		return false
	}
	tn := t.UnixNano()
	for _, d := range devs {
		if d.lastOK.Load() <= tn {
			return false
		}
	}
	return true
}

// window is a snapshot of counters at one end of the measurement window.
type window struct {
	at     time.Time
	polls  int64
	server serverSample
}

func (r *runner) window(ctx context.Context, smp *sampler) window {
	w := window{at: r.now(), polls: r.st.pollsOK.Load()}
	if smp != nil {
		w.server = smp.sample(ctx)
	}
	return w
}

// publishLoop publishes commands at the configured rate (or one per
// device) between Start and Stop.
func (r *runner) publishLoop(ctx context.Context, start time.Time, pub Publisher, launchDone <-chan struct{}) {
	c := r.sc.Commands
	var pw sync.WaitGroup
	defer pw.Wait()
	sem := make(chan struct{}, 128)
	sleepUntil := func(t time.Time) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Until(t)):
			return true
		}
	}
	if !sleepUntil(start.Add(c.Start)) {
		return
	}
	stopAt := start.Add(c.Stop)
	rate := c.Rate
	if rate == 0 {
		rate = 1000
	}
	per := time.Duration(float64(time.Second) / rate)
	batch := 1
	if per < time.Millisecond {
		batch = int(rate / 1000)
		per = time.Millisecond
	}
	var targets []string
	if c.PerDevice {
		// Wait until every device has been online once (or Stop).
		for {
			r.mu.Lock()
			n := len(r.everOn)
			r.mu.Unlock()
			if n >= r.sc.Devices.Count || r.now().After(stopAt) {
				break
			}
			if !sleepUntil(time.Now().Add(50 * time.Millisecond)) {
				return
			}
		}
		r.mu.Lock()
		targets = append([]string(nil), r.everOn...)
		r.mu.Unlock()
	}
	tick := time.NewTicker(per)
	defer tick.Stop()
	next := 0
	for r.now().Before(stopAt) {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for range batch {
			var dev string
			if c.PerDevice {
				if next >= len(targets) {
					return
				}
				dev = targets[next]
				next++
			} else {
				r.mu.Lock()
				if len(r.everOn) > 0 {
					dev = r.everOn[mrand.IntN(len(r.everOn))]
				}
				r.mu.Unlock()
				if dev == "" {
					continue
				}
			}
			r.mu.Lock()
			r.seq++
			id := fmt.Sprintf("%s-%d", r.runID, r.seq)
			r.mu.Unlock()
			payload := []byte(cmdMarker + id + ";")
			if pad := c.Size - len(payload); pad > 0 {
				payload = append(payload, strings.Repeat("x", pad)...)
			}
			topic := strings.ReplaceAll(c.Topic, "{device}", dev)
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			r.m.Published(id, dev)
			pw.Go(func() {
				defer func() { <-sem }()
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				if err := pub.Publish(pctx, topic, payload, c.Expiry); err != nil {
					r.m.Failed(id)
					reason := "error"
					if errors.Is(err, ErrNotAccepted) {
						reason = "not_accepted"
					}
					r.mu.Lock()
					r.pubErrors[reason]++
					r.mu.Unlock()
				}
			})
		}
	}
}

// progress rewrites one status line every second.
func (r *runner) progress(ctx context.Context, start time.Time) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last int64
	for {
		select {
		case <-ctx.Done():
			fmt.Fprint(r.o.Progress, "\n")
			return
		case <-t.C:
		}
		polls := r.st.polls.Load()
		c := r.m.Counts()
		_, ref := r.st.snapshotMaps()
		var errs []string
		for k, v := range ref {
			errs = append(errs, fmt.Sprintf("%s:%d", k, v))
		}
		fmt.Fprintf(r.o.Progress, "\r\x1b[K%4.0fs online %d/%d  polls/s %d  cmds %d/%d  errors {%s}  p99 poll %.1fms handshake %.1fms deliver %.1fms",
			r.now().Sub(start).Seconds(), r.st.online.Load(), r.sc.Devices.Count, polls-last, c.Delivered, c.Published,
			strings.Join(errs, " "), ms(r.st.poll.quantile(.99)), ms(r.st.handshake.quantile(.99)), ms(r.st.deliver.quantile(.99)))
		last = polls
	}
}
