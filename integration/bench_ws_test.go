package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// BenchmarkIdleWebSocketMemory measures edgeshim's resident memory per idle
// TLS WebSocket: device sockets of a bridge (each with its MQTT session on
// mosquitto) and MQTT-over-WebSocket pass-through sockets (each with its TCP
// connection to the broker). Each costs edgeshim two descriptors, so N stays
// under the 20,000 open-file limit (EDGESHIM_WS_N, default 5000).
//
// The clients offer X25519 and P-256 only, the classic ClientHello of
// devices (and OpenSSL 3.0): Go's default X25519MLKEM768 key share makes a
// ~1.5 KiB hello that grows crypto/tls's server-side buffers for the
// connection's life. EDGESHIM_WS_PQ=1 offers Go's default curves instead.
//
//	EDGESHIM_WS_N=9000 go test -run XXX -bench IdleWebSocketMemory -benchtime 1x ./integration/
func BenchmarkIdleWebSocketMemory(b *testing.B) {
	n := 5000
	if v, err := strconv.Atoi(os.Getenv("EDGESHIM_WS_N")); err == nil {
		n = v
	}
	hello := "classic"
	if os.Getenv("EDGESHIM_WS_PQ") == "1" {
		hello = "pq"
	}
	b.Run(fmt.Sprintf("device/hello=%s/n=%d", hello, n), func(b *testing.B) {
		for b.Loop() {
			m := startMosquitto(b, "max_connections -1\n")
			app := newMQTTPeer(b, m.Addr(), "bench-app", true)
			status := app.subscribe("devices/+/status")
			cfg := bridgeConfig(m.URL(), "", "    websocket: {path: \"/devices/{device}/ws\", format: json}\n")
			cfg = strings.Replace(cfg, "max_conns: 10000}", "max_conns: 20000}", 1)
			e := startEdgeshim(b, cfg, benchEdgeOptions())
			base := memSnapshot(b, e)
			conns := dialMany(b, e, n, func(i int) string { return fmt.Sprintf("/devices/m-%d/ws", i) }, nil)
			for online := 0; online < n; {
				select {
				case msg := <-status:
					if string(msg.Payload) == "online" {
						online++
					}
				case <-time.After(60 * time.Second):
					b.Fatalf("%d of %d sessions online", online, n)
				}
			}
			reportPerConn(b, "device", e, base, n)
			closeAll(conns)
		}
	})
	b.Run(fmt.Sprintf("mqtt_ws/hello=%s/n=%d", hello, n), func(b *testing.B) {
		for b.Loop() {
			m := startMosquitto(b, "max_connections -1\n")
			e := startEdgeshim(b, mqttWSConfig("tcp://"+m.Addr(), "limits: {max_conns: 20000, per_ip: {max_conns: 20000, rate: 100000, burst: 100000}}\n"), benchEdgeOptions())
			base := memSnapshot(b, e)
			conns := dialMany(b, e, n, func(int) string { return "/mqtt" }, []string{"mqtt"})
			reportPerConn(b, "mqtt_ws", e, base, n)
			closeAll(conns)
		}
	})
}

func dialMany(b *testing.B, e *Edge, n int, path func(int) string, subprotocols []string) []*websocket.Conn {
	tc := e.TLSConfig()
	if os.Getenv("EDGESHIM_WS_PQ") != "1" {
		tc.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	}
	d := websocket.Dialer{TLSClientConfig: tc, Subprotocols: subprotocols, NetDialContext: spreadDialer(),
		ReadBufferSize: 256, WriteBufferSize: 256}
	conns := make([]*websocket.Conn, n)
	sem := make(chan struct{}, 64)
	errs := make(chan error, n)
	for i := range n {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, _, err := d.DialContext(ctx, "wss://"+e.Addr("https")+path(i), nil)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
			go func() { // answer pings like a live device
				for {
					if _, _, err := c.ReadMessage(); err != nil {
						return
					}
				}
			}()
		}()
	}
	for range cap(sem) {
		sem <- struct{}{}
	}
	close(errs)
	for err := range errs {
		b.Fatalf("dial: %v", err)
	}
	return conns
}

// benchEdgeOptions passes GOGC/GOMEMLIMIT through (they are in the
// environment anyway) and turns on the admin profiles when
// EDGESHIM_WS_PROFILE names a directory to save them in.
func benchEdgeOptions() EdgeOptions {
	if os.Getenv("EDGESHIM_WS_PROFILE") != "" {
		return EdgeOptions{Env: []string{"EDGESHIM_PPROF=1"}}
	}
	return EdgeOptions{}
}

// mem is a process's memory as the kernel (RSS) and the Go runtime
// (from /metrics) see it.
type mem struct {
	rss, heapInuse, stackInuse, goroutines float64
}

func memSnapshot(b *testing.B, e *Edge) mem {
	return mem{
		rss:        float64(rss(b, e.cmd.Process.Pid)),
		heapInuse:  e.Metric("go_memstats_heap_inuse_bytes"),
		stackInuse: e.Metric("go_memstats_stack_inuse_bytes"),
		goroutines: e.Metric("go_goroutines"),
	}
}

func reportPerConn(b *testing.B, kind string, e *Edge, base mem, n int) {
	// Let the handshakes' garbage be collected before reading RSS: 2 s by
	// default; EDGESHIM_WS_SETTLE=150s measures the steady idle state,
	// after the runtime's periodic GC (every 2 min) and its scavenger have
	// run, as a fleet of idle devices sees it.
	settle := 2 * time.Second
	if d, err := time.ParseDuration(os.Getenv("EDGESHIM_WS_SETTLE")); err == nil {
		settle = d
	}
	time.Sleep(settle)
	held := memSnapshot(b, e)
	per := func(v, v0 float64) float64 { return (v - v0) / float64(n) / 1024 }
	b.ReportMetric(per(held.rss, base.rss), "KiB/conn")
	b.ReportMetric(per(held.heapInuse, base.heapInuse), "heap-KiB/conn")
	b.ReportMetric(per(held.stackInuse, base.stackInuse), "stack-KiB/conn")
	b.ReportMetric((held.goroutines-base.goroutines)/float64(n), "goroutines/conn")
	label := kind + " (classic hello)"
	if os.Getenv("EDGESHIM_WS_PQ") == "1" {
		label = kind + " (pq hello)"
	}
	fmt.Fprintf(os.Stderr, "%s, %s after the last connection: %d idle TLS WebSockets, edgeshim RSS %.0f → %.0f KiB, %.1f KiB per connection "+
		"(Go heap in use %.1f KiB, stacks %.1f KiB, %.2f goroutines)\n", label, settle, n, base.rss/1024, held.rss/1024,
		per(held.rss, base.rss), per(held.heapInuse, base.heapInuse), per(held.stackInuse, base.stackInuse),
		(held.goroutines-base.goroutines)/float64(n))
	if dir := os.Getenv("EDGESHIM_WS_PROFILE"); dir != "" {
		for _, p := range []string{"heap?gc=1", "goroutine?debug=1"} {
			saveProfile(b, e, p, filepath.Join(dir, kind+"-"+strings.Split(p, "?")[0]+".pprof"))
		}
	}
}

// saveProfile fetches /debug/pprof/<p> from the admin listener into file.
func saveProfile(b *testing.B, e *Edge, p, file string) {
	resp, err := http.Get("http://" + e.Addr("admin") + "/debug/pprof/" + p)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		b.Fatal(err)
	}
}

func closeAll(conns []*websocket.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}
