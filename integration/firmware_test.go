package integration

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// silentRelay forwards device connections to edgeshim until silence():
// then it stops reading and forwarding, without FIN or RST, like a device
// whose radio vanished. Its socket toward edgeshim has a small receive
// buffer, so the kernel cannot swallow a whole answer for it.
type silentRelay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	quiet  bool
	wg     sync.WaitGroup
}

func newSilentRelay(t *testing.T, target string) *silentRelay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &silentRelay{ln: ln, target: target}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for _, c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *silentRelay) accept() {
	defer r.wg.Done()
	for {
		dev, err := r.ln.Accept()
		if err != nil {
			return
		}
		d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
			return serr
		}}
		up, err := d.Dial("tcp", r.target)
		if err != nil {
			dev.Close()
			continue
		}
		r.mu.Lock()
		r.conns = append(r.conns, dev, up)
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pipe(up, dev)
		go r.pipe(dev, up)
	}
}

// pipe copies until the relay goes silent (its reads are cut by a past
// deadline) or a side closes; it closes nothing.
func (r *silentRelay) pipe(dst, src net.Conn) {
	defer r.wg.Done()
	buf := make([]byte, 1024)
	for {
		n, err := src.Read(buf)
		r.mu.Lock()
		quiet := r.quiet
		r.mu.Unlock()
		if quiet || err != nil {
			return
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (r *silentRelay) silence() {
	r.mu.Lock()
	r.quiet = true
	for _, c := range r.conns {
		c.SetReadDeadline(time.Unix(1, 0))
	}
	r.mu.Unlock()
}

// TestBridgeAckWriteNeedsReceipt: with ack write, a command written to a
// device that vanished silently during its held poll is not PUBACKed: the
// bytes were never acknowledged by the device's TCP stack, so after
// poll.ack_write_timeout edgeshim closes the connection and keeps the
// command, which the device's next poll (through a healthy path) gets.
func TestBridgeAckWriteNeedsReceipt(t *testing.T) { ackWriteNeedsReceipt(t, false) }

// TestBridgeAckWriteNeedsReceiptHTTP2: the same over HTTP/2, where the
// answer's stream shares the socket (proxy hands h2 requests their
// connection too).
func TestBridgeAckWriteNeedsReceiptHTTP2(t *testing.T) { ackWriteNeedsReceipt(t, true) }

func ackWriteNeedsReceipt(t *testing.T, h2 bool) {
	m := startMosquitto(t, "")
	app := newMQTTPeer(t, m.Addr(), "app", true)
	status := app.subscribe("devices/d1/status")
	cfg := strings.Replace(bridgeConfig(m.URL(), "", ""), "max_wait: 30s}", "max_wait: 30s, ack_write_timeout: 2s}", 1)
	e := startEdgeshim(t, cfg)
	relay := newSilentRelay(t, e.Addr("https"))
	tr := &http.Transport{TLSClientConfig: e.TLSConfig(), ForceAttemptHTTP2: h2,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", relay.ln.Addr().String())
		}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A first poll on the relayed connection shows the protocol in use.
	probe, _ := http.NewRequest(http.MethodGet, e.URL("/devices/probe/commands"), nil)
	resp, err := tr.RoundTrip(probe)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if (resp.ProtoMajor == 2) != h2 {
		t.Fatalf("relayed poll over %s", resp.Proto)
	}
	held := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.URL("/devices/d1/commands?wait=30"), nil)
		resp, err := tr.RoundTrip(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		held <- err
	}()
	await(t, status, "online", 10*time.Second)
	if v := e.WaitMetric("edgeshim_bridge_polls_held", 1, 10*time.Second); v != 1 {
		t.Fatalf("held polls = %v", v)
	}
	time.Sleep(2 * time.Second) // the scenario: the device vanishes 2 s into its poll
	relay.silence()
	time.Sleep(3 * time.Second) // and the command comes 3 s later
	// 28 kB: more than the relay's receive window, less than an HTTP/2
	// stream's initial flow-control window (64 KiB).
	payload := strings.Repeat("open door 17; ", 2000)
	app.publish("devices/d1/commands", payload)
	if v := e.WaitMetric("edgeshim_bridge_commands_unconfirmed_total", 1, 20*time.Second); v != 1 {
		t.Fatalf("unconfirmed answers = %v, want 1", v)
	}
	if v := e.Metric("edgeshim_bridge_commands_delivered_total"); v != 0 {
		t.Fatalf("delivered = %v before the device had it", v)
	}
	// The device comes back through a healthy path: the command is there.
	r := poll(e.Client(), e.URL("/devices/d1/commands?wait=10"))
	if r.code != 200 || r.body != payload {
		t.Fatalf("poll on a healthy path = %d, %d bytes; want the command (lost = 1)", r.code, len(r.body))
	}
	if v := e.WaitMetric("edgeshim_bridge_commands_delivered_total", 1, 5*time.Second); v != 1 {
		t.Errorf("delivered = %v, want 1", v)
	}
	cancel()
	<-held
}
