package integration

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// BenchmarkPollArrivals: new polls arrive at 500, 1,000 and 2,000 per
// second for 20 s, each on a new TLS connection (resumed: the clients
// share a session cache), one command per device, published by a backend
// as soon as the device's session is online. It reports the share of
// devices that got their command, refusals by kind (503/429 with
// Retry-After are answers; resets and timeouts are not), the client's
// handshake p99, arrival (handshake done) → command p99, and edgeshim's
// CPU per poll.
//
//	go test -run XXX -bench PollArrivals -benchtime 1x -timeout 30m ./integration/
//
// EDGESHIM_ARRIVALS_FOR=5s shortens each run.
func BenchmarkPollArrivals(b *testing.B) {
	dur := 20 * time.Second
	if d, err := time.ParseDuration(os.Getenv("EDGESHIM_ARRIVALS_FOR")); err == nil {
		dur = d
	}
	for _, rate := range []int{500, 1000, 2000} {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) {
			for b.Loop() {
				benchArrivals(b, rate, dur)
			}
		})
	}
}

type arrival struct {
	code      int
	retry     bool
	err       string
	handshake time.Duration
	toCommand time.Duration
	resumed   bool
}

func benchArrivals(b *testing.B, rate int, dur time.Duration) {
	m := startMosquitto(b, "max_connections -1\n")
	app := newMQTTPeer(b, m.Addr(), "bench-app", true)
	status := app.subscribe("devices/+/status")
	cfg := bridgeConfig(m.URL(), "", "")
	cfg = strings.Replace(cfg, "limits: {", "limits: {handshake: {rate: 100000, burst: 100000}, ", 1)
	e := startEdgeshim(b, cfg)
	prefix := fmt.Sprintf("a%d-", rate)

	// The backend: one command per device, once its session is online,
	// published by 32 workers (QoS 1 waits for its PUBACK).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var pubWG sync.WaitGroup
	for range 32 {
		pubWG.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case msg := <-status:
					dev := strings.TrimSuffix(strings.TrimPrefix(msg.Topic, "devices/"), "/status")
					if string(msg.Payload) != "online" || !strings.HasPrefix(dev, prefix) {
						continue
					}
					pctx, pc := context.WithTimeout(ctx, 5*time.Second)
					app.cl.Publish(pctx, &paho.Publish{Topic: "devices/" + dev + "/commands", QoS: 1, Payload: []byte("go")})
					pc()
				}
			}
		})
	}

	cache := tls.NewLRUClientSessionCache(64)
	tc := e.TLSConfig()
	tc.ClientSessionCache = cache
	tr := &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true, DialContext: spreadDialer(),
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	poll(c, e.URL("/devices/warm/commands")) // a ticket for the cache

	cpu0 := procCPU(b, e.cmd.Process.Pid)
	n := int(dur.Seconds() * float64(rate))
	res := make([]arrival, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		// On schedule: a late start is caught up at once, not dropped
		// (as a Ticker would).
		if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
			time.Sleep(d)
		}
		wg.Go(func() { res[i] = arrive(c, e.URL(fmt.Sprintf("/devices/%s%d/commands?wait=25", prefix, i))) })
	}
	sent := time.Since(start)
	wg.Wait()
	cpu := procCPU(b, e.cmd.Process.Pid) - cpu0
	cancel()
	pubWG.Wait()

	kinds := map[string]int{}
	var hs, tc2 []time.Duration
	delivered, resumed := 0, 0
	for _, r := range res {
		switch {
		case r.err != "":
			kinds["error:"+r.err]++
		case r.code == 200:
			delivered++
			tc2 = append(tc2, r.toCommand)
		case r.code == 503 || r.code == 429:
			if r.retry {
				kinds[strconv.Itoa(r.code)+"+Retry-After"]++
			} else {
				kinds[strconv.Itoa(r.code)+" without Retry-After"]++
			}
		default:
			kinds[strconv.Itoa(r.code)]++
		}
		if r.handshake > 0 {
			hs = append(hs, r.handshake)
		}
		if r.resumed {
			resumed++
		}
	}
	b.ReportMetric(float64(delivered)/float64(n)*100, "%delivered")
	b.ReportMetric(float64(resumed)/float64(n)*100, "%resumed")
	b.ReportMetric(float64(n)/sent.Seconds(), "offered/s")
	if len(hs) > 0 {
		_, p99 := percentiles(hs)
		b.ReportMetric(float64(p99.Microseconds())/1000, "handshake-p99-ms")
	}
	if len(tc2) > 0 {
		_, p99 := percentiles(tc2)
		b.ReportMetric(float64(p99.Microseconds())/1000, "arrival→command-p99-ms")
	}
	b.ReportMetric(cpu.Seconds()*1e6/float64(n), "edge-cpu-µs/poll")
	keys := make([]string, 0, len(kinds))
	for k := range kinds {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, kinds[k]))
	}
	logs := e.Logs.String()
	b.Logf("rate %d/s for %s: %d polls, %d delivered; other answers: %s; edgeshim logged %d TLS handshake errors (%d timeouts), %d failed accepts",
		rate, dur, n, delivered, strings.Join(parts, " "), strings.Count(logs, "TLS handshake error"),
		strings.Count(logs, "i/o timeout"), strings.Count(logs, "accept failed"))
}

// arrive is one device: a new (resumed) TLS connection, one long-poll.
func arrive(c *http.Client, url string) arrival {
	var a arrival
	var hsStart, hsDone time.Time
	trace := &httptrace.ClientTrace{
		TLSHandshakeStart: func() { hsStart = time.Now() },
		TLSHandshakeDone: func(cs tls.ConnectionState, err error) {
			hsDone = time.Now()
			if err == nil {
				a.handshake, a.resumed = hsDone.Sub(hsStart), cs.DidResume
			}
		},
	}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", url, nil)
	resp, err := c.Do(req)
	if err != nil {
		a.err = errKind(err)
		return a
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	a.code, a.retry = resp.StatusCode, resp.Header.Get("Retry-After") != ""
	if !hsDone.IsZero() {
		a.toCommand = time.Since(hsDone)
	}
	return a
}

func errKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other"
}

// BenchmarkRestartStorm: N devices long-poll through edgeshim (each its
// own keep-alive connection, resumed handshakes); edgeshim is restarted
// (kill -9, or SIGTERM with a 1 s drain delay) on the same port and data
// dir. Devices retry at once on a broken connection (jittered 0-1 s) and
// honour Retry-After. It reports the time from the signal until every
// device's session is online again, and the broker's peak CONNECT rate
// during it (from mosquitto's log).
//
// N defaults to 8000: a device costs edgeshim two descriptors (its
// connection, its broker connection), and the per-process limit here is
// 20,000, so the 15,000 does not fit one edgeshim on this box.
//
//	EDGESHIM_RESTART_N=8000 go test -run XXX -bench RestartStorm -benchtime 1x -timeout 30m ./integration/
func BenchmarkRestartStorm(b *testing.B) {
	n := 8000
	if v, err := strconv.Atoi(os.Getenv("EDGESHIM_RESTART_N")); err == nil {
		n = v
	}
	for _, how := range []string{"kill", "term"} {
		b.Run(fmt.Sprintf("%s/devices=%d", how, n), func(b *testing.B) {
			for b.Loop() {
				benchRestart(b, how, n)
			}
		})
	}
}

func benchRestart(b *testing.B, how string, n int) {
	m := startMosquitto(b, "max_connections -1\n")
	app := newMQTTPeer(b, m.Addr(), "bench-app", true)
	status := app.subscribe("devices/+/status")
	port := freePort(b)
	cfg := bridgeConfig(m.URL(), "", "")
	cfg = strings.Replace(cfg, `https: "127.0.0.1:0"`, fmt.Sprintf(`https: "127.0.0.1:%d"`, port), 1)
	cfg = strings.Replace(cfg, "limits: {", "limits: {handshake: {rate: 100000, burst: 100000}, ", 1)
	cfg += "shutdown: {grace: 30s, drain_delay: 1s}\n"
	dir := b.TempDir()
	e := startEdgeshim(b, cfg, EdgeOptions{Dir: dir})

	tc := e.TLSConfig()
	tc.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	tr := &http.Transport{TLSClientConfig: tc, DialContext: spreadDialer(), MaxIdleConnsPerHost: n, MaxConnsPerHost: 0,
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	url := "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	// online[i] is the last time device i's session came online.
	var mu sync.Mutex
	onlineAt := map[string]time.Time{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case msg := <-status:
				if string(msg.Payload) == "online" {
					mu.Lock()
					onlineAt[msg.Topic] = time.Now()
					mu.Unlock()
				}
			}
		}
	})
	countSince := func(t0 time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, at := range onlineAt {
			if at.After(t0) {
				k++
			}
		}
		return k
	}
	var retried atomic.Int64
	for i := range n {
		wg.Go(func() {
			u := fmt.Sprintf("%s/devices/r-%d/commands?wait=25", url, i)
			for ctx.Err() == nil {
				r := poll(c, u)
				switch {
				case r.err != nil:
					retried.Add(1)
					sleepCtx(ctx, time.Duration(rand.Int64N(int64(time.Second))))
				case r.code == 503 || r.code == 429:
					s, _ := strconv.Atoi(r.retryAt)
					sleepCtx(ctx, time.Duration(s)*time.Second)
				}
			}
		})
		if i%250 == 249 {
			time.Sleep(500 * time.Millisecond) // ramp: 500 new devices/s
		}
	}
	ramp := time.Now()
	for countSince(time.Time{}) < n {
		if time.Since(ramp) > 2*time.Minute {
			b.Fatalf("only %d of %d devices online before the restart", countSince(time.Time{}), n)
		}
		time.Sleep(100 * time.Millisecond)
	}

	t0 := time.Now()
	if how == "kill" {
		e.Kill()
	} else {
		e.Signal(syscall.SIGTERM)
		if err := e.Wait(60 * time.Second); err != nil {
			b.Logf("exit: %v", err)
		}
	}
	stopped := time.Since(t0)
	e2 := startEdgeshim(b, cfg, EdgeOptions{Dir: dir})
	_ = e2
	for countSince(t0) < n {
		if time.Since(t0) > 5*time.Minute {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	back := time.Since(t0)
	got := countSince(t0)
	cancel()
	tr.CloseIdleConnections()

	peak, total := connectRate(m.logs.String(), t0)
	b.ReportMetric(back.Seconds(), "s-until-all-online")
	b.ReportMetric(stopped.Seconds(), "s-old-process-stopping")
	b.ReportMetric(float64(peak), "peak-CONNECT/s")
	b.Logf("%s: %d/%d sessions online again %s after the signal (old process gone after %s); broker CONNECTs since: %d, peak %d/s; device retries %d",
		how, got, n, back.Round(time.Millisecond), stopped.Round(time.Millisecond), total, peak, retried.Load())
	wg.Wait()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

var mosqConnectRe = regexp.MustCompile(`(?m)^(\d+): New client connected from`)

// connectRate counts mosquitto's "New client connected" lines per second
// from t0 on: the peak and the total.
func connectRate(logs string, t0 time.Time) (peak, total int) {
	per := map[int64]int{}
	for _, m := range mosqConnectRe.FindAllStringSubmatch(logs, -1) {
		s, _ := strconv.ParseInt(m[1], 10, 64)
		if s >= t0.Unix() {
			per[s]++
			total++
		}
	}
	for _, k := range per {
		peak = max(peak, k)
	}
	return peak, total
}
