package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// BenchmarkBridgeDelivery: N devices hold long-polls through edgeshim; a
// publisher sends one command per device at a fixed rate; it reports the
// publish → device latency (p50, p99) and edgeshim's resident memory per
// device session, beside the same publisher → N direct MQTT subscribers on
// the same broker.
//
//	go test -run XXX -bench BridgeDelivery -benchtime 1x ./integration/
//
// EDGESHIM_BENCH_DEVICES=N runs N devices only (a small N while the
// machine is shared).
func BenchmarkBridgeDelivery(b *testing.B) {
	sizes := []int{1000, 5000}
	if v, err := strconv.Atoi(os.Getenv("EDGESHIM_BENCH_DEVICES")); err == nil && v > 0 {
		sizes = []int{v}
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			for b.Loop() {
				benchBridge(b, n)
			}
		})
	}
}

const benchRate = 1000 // commands per second

func benchBridge(b *testing.B, n int) {
	m := startMosquitto(b, "max_connections -1\n")
	app := newMQTTPeer(b, m.Addr(), "bench-app", true)
	status := app.subscribe("devices/+/status")
	e := startEdgeshim(b, bridgeConfig(m.URL(), "", "")+"\n")
	idle := rss(b, e.cmd.Process.Pid)
	idleG := e.Metric("go_goroutines")

	tr := &http.Transport{TLSClientConfig: e.TLSConfig(), MaxIdleConnsPerHost: n,
		DialContext: spreadDialer()}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	lat := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := poll(c, e.URL(fmt.Sprintf("/devices/b-%d/commands?wait=30", i)))
			if r.code != 200 {
				b.Errorf("device %d: %+v", i, r)
				return
			}
			sent, _ := strconv.ParseInt(r.body, 10, 64)
			lat[i] = time.Since(time.Unix(0, sent))
		}()
	}
	for online := 0; online < n; {
		select {
		case msg := <-status:
			if string(msg.Payload) == "online" {
				online++
			}
		case <-time.After(60 * time.Second):
			b.Fatalf("only %d sessions online", online)
		}
	}
	// Every poll held (and parked) before measuring.
	e.WaitMetric("edgeshim_bridge_polls_held", float64(n), 60*time.Second)
	held := rss(b, e.cmd.Process.Pid)
	heldG := e.Metric("go_goroutines")
	publishPaced(b, app, n, "devices/b-%d/commands")
	wg.Wait()
	p50, p99 := percentiles(lat)

	// The same publisher → direct subscribers on the broker.
	direct := make([]time.Duration, n)
	var dwg sync.WaitGroup
	dwg.Add(n)
	for i := range n {
		conn, err := net.Dial("tcp", m.Addr())
		if err != nil {
			b.Fatal(err)
		}
		var once sync.Once
		cl := paho.NewClient(paho.ClientConfig{ClientID: fmt.Sprintf("direct-%d", i), Conn: conn,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				sent, _ := strconv.ParseInt(string(pr.Packet.Payload), 10, 64)
				once.Do(func() { direct[i] = time.Since(time.Unix(0, sent)); dwg.Done() })
				return true, nil
			}}})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := cl.Connect(ctx, &paho.Connect{ClientID: fmt.Sprintf("direct-%d", i), KeepAlive: 60, CleanStart: true}); err != nil {
			b.Fatal(err)
		}
		if _, err := cl.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: fmt.Sprintf("direct/%d", i), QoS: 1}}}); err != nil {
			b.Fatal(err)
		}
		cancel()
		defer cl.Disconnect(&paho.Disconnect{})
	}
	publishPaced(b, app, n, "direct/%d")
	dwg.Wait()
	d50, d99 := percentiles(direct)

	perSession := float64(held-idle) / float64(n) / 1024
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(d50.Microseconds())/1000, "direct-p50-ms")
	b.ReportMetric(float64(d99.Microseconds())/1000, "direct-p99-ms")
	b.ReportMetric(perSession, "KiB/session")
	gPer := (heldG - idleG) / float64(n)
	b.ReportMetric(gPer, "goroutines/session")
	fmt.Fprintf(os.Stderr, "devices=%d  edgeshim p50 %s p99 %s | direct MQTT p50 %s p99 %s | ratio p50 %.2f p99 %.2f | RSS %d→%d KiB, %.1f KiB and %.2f goroutines per held session (HTTP/1.1 TLS conn + MQTT session)\n",
		n, p50, p99, d50, d99, float64(p50)/float64(d50), float64(p99)/float64(d99), idle>>10, held>>10, perSession, gPer)
}

// publishPaced publishes one command per device at benchRate, payload =
// send time in Unix nanoseconds.
func publishPaced(b *testing.B, app *mqttPeer, n int, topicFmt string) {
	tick := time.NewTicker(time.Second / benchRate)
	defer tick.Stop()
	for i := range n {
		<-tick.C
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := app.cl.Publish(ctx, &paho.Publish{Topic: fmt.Sprintf(topicFmt, i), QoS: 1,
			Payload: []byte(strconv.FormatInt(time.Now().UnixNano(), 10))})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
	}
}

func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], s[len(s)*99/100]
}

// rss reads a process's resident set size in bytes.
func rss(b testing.TB, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// spreadDialer spreads client connections over 127.0.0.2-9 as sources so
// that large runs do not exhaust one address's ephemeral ports.
func spreadDialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	var mu sync.Mutex
	i := 0
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		src := fmt.Sprintf("127.0.0.%d", 2+i%8)
		i++
		mu.Unlock()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return d.DialContext(ctx, network, addr)
	}
}

var _ = io.Discard
