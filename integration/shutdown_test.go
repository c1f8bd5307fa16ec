package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

type timedPoll struct {
	pollResult
	proto string
	close bool
	at    time.Time
}

// TestShutdownAnswersHeldPolls: on SIGTERM /readyz answers 503 at once
// while the listener still accepts; after shutdown.drain_delay every
// listener (TCP and UDP) closes, every held poll (HTTP/1.1, HTTP/2,
// HTTP/3) is answered with its empty answer at once (Connection: close on
// HTTP/1.1), device WebSockets get 1001, and the process exits long
// before shutdown.grace, logging what it answered, drained and cut.
func TestShutdownAnswersHeldPolls(t *testing.T) {
	m := startMosquitto(t, "")
	cfg := bridgeConfig(m.URL(), "", "    websocket: {path: \"/devices/{device}/ws\", format: json}\n")
	cfg = strings.Replace(cfg, `listen: {https: "127.0.0.1:0",`, `listen: {https: "127.0.0.1:0", http3: true,`, 1)
	const drainDelay = 2 * time.Second
	cfg += "shutdown: {grace: 30s, drain_delay: 2s}\n"
	// A backend request held in flight across the drain: it finishes
	// within the grace, while everything else has been answered already.
	arrived, release := make(chan struct{}), make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "finished")
	}))
	defer slow.Close()
	releaseSlow := sync.OnceFunc(func() { close(release) })
	defer releaseSlow() // before slow.Close, which waits for the handler
	cfg = strings.Replace(cfg, "routes: [{path: /devices/, bridge: fleet}]",
		fmt.Sprintf("routes: [{path: /devices/, bridge: fleet}, {path: /mqtt, mqtt_ws: {broker: %q}}, {path: /slow, proxy: {backends: [%q]}}]", "tcp://"+m.Addr(), slow.URL), 1)
	e := startEdgeshim(t, cfg, EdgeOptions{Listeners: []string{"https", "http3", "admin"}})

	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: e.TLSConfig(), TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	h2 := e.Client()
	h3t := &http3.Transport{TLSClientConfig: e.TLSConfig()}
	defer h3t.Close()
	h3 := &http.Client{Transport: h3t}
	results := make(chan timedPoll, 3)
	start := func(c *http.Client, url string) {
		go func() {
			resp, err := c.Get(url)
			r := timedPoll{at: time.Now()}
			if err != nil {
				r.err = err
			} else {
				resp.Body.Close()
				r.code, r.proto, r.close = resp.StatusCode, resp.Proto, resp.Close
			}
			results <- r
		}()
	}
	start(h1, e.URL("/devices/p1/commands?wait=25"))
	start(h2, e.URL("/devices/p2/commands?wait=25"))
	start(h3, "https://"+e.Addr("http3")+"/devices/p3/commands?wait=25")
	if got := e.WaitMetric("edgeshim_bridge_polls_held", 3, 20*time.Second); got != 3 {
		t.Fatalf("held polls = %v, want 3", got)
	}
	d := websocket.Dialer{TLSClientConfig: e.TLSConfig()}
	ws, resp, err := d.Dial("wss://"+e.Addr("https")+"/devices/w1/ws", nil)
	if err != nil {
		t.Fatalf("websocket dial: %v %v", err, resp)
	}
	defer ws.Close()
	wsClosed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				wsClosed <- err
				return
			}
		}
	}()

	type wsEnd struct {
		code int
		at   time.Time
	}
	mqttWS := dialMQTTWS(t, e)
	defer mqttWS.Close()
	mqttEnd := make(chan wsEnd, 1)
	go func() {
		code := closeCode(mqttWS, 30*time.Second)
		mqttEnd <- wsEnd{code, time.Now()}
	}()

	slowDone := make(chan string, 1)
	go func() {
		r := poll(h1, e.URL("/slow"))
		slowDone <- fmt.Sprint(r.code, " ", r.body, " ", r.err)
	}()
	<-arrived

	readyz := func() int {
		r, err := http.Get("http://" + e.Addr("admin") + "/readyz")
		if err != nil {
			return 0
		}
		r.Body.Close()
		return r.StatusCode
	}
	if c := readyz(); c != 200 {
		t.Fatalf("readyz before SIGTERM = %d", c)
	}
	sigAt := time.Now()
	e.Signal(syscall.SIGTERM)
	e.Logs.waitLine(t, regexp.MustCompile(`shutting down`), 10*time.Second)
	if c := readyz(); c != 503 {
		t.Fatalf("readyz after SIGTERM = %d, want 503 at once", c)
	}
	// The listener still accepts during the drain delay: a new connection
	// is served.
	fresh := &http.Client{Transport: &http.Transport{TLSClientConfig: e.TLSConfig()}}
	if r := poll(fresh, e.URL("/devices/p4/commands")); r.code != 204 {
		t.Errorf("new connection during the drain delay: %+v, want 204", r)
	}
	if time.Since(sigAt) >= drainDelay {
		t.Log("machine too slow to check the listener within the drain delay")
	}

	e.Logs.waitLine(t, regexp.MustCompile(`msg="draining`), 20*time.Second)
	drainSeen := time.Now()
	for range 3 {
		select {
		case r := <-results:
			if r.err != nil || r.code != 204 {
				t.Errorf("held poll: %+v, want its empty answer 204", r)
				continue
			}
			if r.at.Sub(sigAt) < drainDelay {
				t.Errorf("%s poll answered %s after SIGTERM, before the drain delay %s", r.proto, r.at.Sub(sigAt), drainDelay)
			}
			if r.proto == "HTTP/1.1" && !r.close {
				t.Errorf("HTTP/1.1 poll answered without Connection: close")
			}
			t.Logf("%s poll answered %s after SIGTERM (drain seen at %s)", r.proto, r.at.Sub(sigAt), drainSeen.Sub(sigAt))
		case <-time.After(10 * time.Second):
			t.Fatal("held polls not answered at the start of the drain")
		}
	}
	select {
	case err := <-wsClosed:
		if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Errorf("websocket: %v, want close 1001", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("websocket not closed at the start of the drain")
	}

	select {
	case end := <-mqttEnd:
		if end.code != websocket.CloseGoingAway || end.at.Sub(sigAt) < drainDelay {
			t.Errorf("MQTT-over-WebSocket: close %d %s after SIGTERM, want 1001 when the drain starts", end.code, end.at.Sub(sigAt))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("MQTT-over-WebSocket socket not closed at the start of the drain")
	}

	select {
	case r := <-slowDone:
		t.Fatalf("in-flight request ended before it was released: %s", r)
	default:
	}

	// Both listeners refuse new connections now, TCP and UDP.
	if c, err := net.DialTimeout("tcp", e.Addr("https"), 2*time.Second); err == nil {
		c.Close()
		t.Error("TCP listener still accepts after the drain started")
	}
	qctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	qtls := e.TLSConfig()
	qtls.NextProtos = []string{"h3"}
	if qc, err := quic.DialAddr(qctx, e.Addr("http3"), qtls, &quic.Config{HandshakeIdleTimeout: 2 * time.Second}); err == nil {
		qc.CloseWithError(0, "")
		t.Error("HTTP/3 (UDP) still accepts after the drain started")
	}

	releaseSlow()
	if r := <-slowDone; r != "200 finished <nil>" {
		t.Errorf("in-flight request across the drain: %s, want 200 finished", r)
	}
	if err := e.Wait(15 * time.Second); err != nil {
		t.Errorf("exit: %v", err)
	}
	if took := time.Since(sigAt); took > 20*time.Second {
		t.Errorf("exit %s after SIGTERM, want long before the 30s grace", took)
	}
	sum := e.Logs.waitLine(t, regexp.MustCompile(`shutdown summary"? polls_answered=(\d+) websockets_closed=(\d+) .*conns_cut=(\d+)`), time.Second)
	if sum[1] != "3" || sum[2] != "1" || sum[3] != "0" {
		t.Errorf("summary: %q, want 3 polls answered, 1 websocket closed, 0 cut", sum[0])
	}
}
