package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// fleet is the N devices of one row of BenchmarkBridgeDelivery: each holds
// a request (an HTTP long-poll, or an MQTT subscription) and records the
// latency of the first command it receives, whose payload is its publish
// time in Unix nanoseconds. stop ends every device and waits for them.
type fleet struct {
	n          int
	lat        []atomic.Int64 // ns; 0: no command yet
	got        atomic.Int64   // devices that received their command
	dups       atomic.Int64   // commands received by a device that had one
	polls      atomic.Int64   // responses read (a command or an empty answer)
	waiting    atomic.Int64   // requests written and not answered yet
	reconnects atomic.Int64
	errCount   atomic.Int64
	all        chan struct{} // closed when got reaches n

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	errs   []string // the first few
}

func newFleet(n int) *fleet {
	ctx, cancel := context.WithCancel(context.Background())
	return &fleet{n: n, lat: make([]atomic.Int64, n), all: make(chan struct{}), ctx: ctx, cancel: cancel,
		conns: map[net.Conn]struct{}{}}
}

// record takes device i's command.
func (f *fleet) record(i int, payload []byte) {
	sent, err := strconv.ParseInt(string(payload), 10, 64)
	if err != nil {
		f.fail(fmt.Errorf("device %d: payload %q is not a send time", i, payload))
		return
	}
	d := max(time.Since(time.Unix(0, sent)), 1)
	if !f.lat[i].CompareAndSwap(0, int64(d)) {
		f.dups.Add(1)
		return
	}
	if f.got.Add(1) == int64(f.n) {
		close(f.all)
	}
}

// fail counts an error while the fleet runs (errors after stop are the
// stop's own) and keeps the first few for the report.
func (f *fleet) fail(err error) {
	if f.ctx.Err() != nil {
		return
	}
	f.errCount.Add(1)
	f.mu.Lock()
	if len(f.errs) < 5 {
		f.errs = append(f.errs, err.Error())
	}
	f.mu.Unlock()
}

func (f *fleet) errors() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.errs, "; ")
}

// trouble is the errors and reconnects for a row's note, "" if none.
func (f *fleet) trouble() string {
	n, r := f.errCount.Load(), f.reconnects.Load()
	if n == 0 && r == 0 {
		return ""
	}
	return fmt.Sprintf("; %d errors, %d reconnects (first: %s)", n, r, f.errors())
}

// track registers an open connection for stop; false once stopped.
func (f *fleet) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *fleet) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

// stop closes every connection and waits for the devices' goroutines.
func (f *fleet) stop() {
	f.mu.Lock()
	f.cancel()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// latencies returns the recorded latencies (devices without a command
// left out).
func (f *fleet) latencies() []time.Duration {
	out := make([]time.Duration, 0, f.n)
	for i := range f.lat {
		if v := f.lat[i].Load(); v > 0 {
			out = append(out, time.Duration(v))
		}
	}
	return out
}

// awaitWaiting waits until every device has a request written and not
// answered (a held poll, or one on its way to being held), or until
// within; it returns how many have.
func (f *fleet) awaitWaiting(within time.Duration) int {
	deadline := time.Now().Add(within)
	for f.waiting.Load() < int64(f.n) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // a counter, no event to await
	}
	return int(f.waiting.Load())
}

// awaitAll waits until every device has its command, or until within.
func (f *fleet) awaitAll(within time.Duration) bool {
	select {
	case <-f.all:
		return true
	case <-time.After(within):
		return false
	}
}

// longPolls starts n devices, ramp per second (0: at once), that poll
// path (with {i} the device number) on connections from dial, keep-alive,
// re-polling after every answer; a device whose connection fails or is
// refused reconnects after 1-3 s. It returns once every device started.
func (f *fleet) longPolls(dial func(context.Context) (net.Conn, error), host, path string, ramp int) {
	start := time.Now()
	for i := range f.n {
		if ramp > 0 {
			select {
			case <-time.After(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(ramp)))):
			case <-f.ctx.Done():
				return
			}
		}
		req := []byte("GET " + strings.ReplaceAll(path, "{i}", strconv.Itoa(i)) + " HTTP/1.1\r\nHost: " + host +
			"\r\nUser-Agent: edgeshim-bench\r\n\r\n")
		f.wg.Go(func() {
			for first := true; ; first = false {
				if !first {
					f.reconnects.Add(1)
					select {
					case <-f.ctx.Done():
						return
					case <-time.After(time.Second + rand.N(2*time.Second)): // no reconnect storm
					}
				}
				c, err := dial(f.ctx)
				if err != nil {
					f.fail(fmt.Errorf("device %d: %w", i, err))
					continue
				}
				if !f.track(c) {
					c.Close()
					return
				}
				f.pollOn(i, c, req)
				f.untrack(c)
			}
		})
	}
}

// pollOn polls on one connection until it fails or the server closes it.
func (f *fleet) pollOn(i int, c net.Conn, req []byte) {
	br := bufio.NewReaderSize(c, 512)
	for {
		if _, err := c.Write(req); err != nil {
			f.fail(fmt.Errorf("device %d: %w", i, err))
			return
		}
		f.waiting.Add(1)
		resp, err := http.ReadResponse(br, nil)
		f.waiting.Add(-1)
		if err != nil {
			f.fail(fmt.Errorf("device %d: %w", i, err))
			return
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if err != nil {
			f.fail(fmt.Errorf("device %d: body: %w", i, err))
			return
		}
		f.polls.Add(1)
		switch {
		case resp.StatusCode == http.StatusOK && len(body) > 0:
			f.record(i, body)
		case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusNoContent:
			// the empty answer at the end of the wait
		default:
			f.fail(fmt.Errorf("device %d: %s %q", i, resp.Status, bytes.TrimSpace(body)))
			return
		}
		if resp.Close {
			return
		}
	}
}

// fleetDial dials addr from 127.0.0.2-9 and, with cfg, runs a TLS
// handshake, at most cap(sem) at a time, so that a large fleet connects at
// a rate the server's handshake admission takes.
func fleetDial(addr string, cfg *tls.Config, sem chan struct{}) func(context.Context) (net.Conn, error) {
	dial := spreadDialer()
	return func(ctx context.Context) (net.Conn, error) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-sem }()
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		c, err := dial(ctx, "tcp", addr)
		if err != nil || cfg == nil {
			return c, err
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
}

// mqttSub is one direct MQTT subscriber: its connection and the lock its
// reader (PUBACKs) and the fleet's pinger write under.
type mqttSub struct {
	c  net.Conn
	mu sync.Mutex
}

func (s *mqttSub) write(p interface {
	WriteTo(io.Writer) (int64, error)
}) error {
	var buf bytes.Buffer
	if _, err := p.WriteTo(&buf); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.c.Write(buf.Bytes())
	return err
}

// mqttSubscribers connects n direct MQTT 5 subscribers (clean start,
// keepalive ka, client id and topic from the formats with the device
// number), 32 at a time, each subscribed to its topic with QoS 1; each
// then reads its commands (recorded, PUBACKed) and one goroutine sends
// their PINGREQs, spread over the keepalive.
func (f *fleet) mqttSubscribers(addr, idFmt, topicFmt string, ka uint16) error {
	subs := make([]*mqttSub, f.n)
	dial := spreadDialer()
	next := make(chan int)
	errc := make(chan error, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range next {
				s, err := f.mqttSubscribe(dial, addr, fmt.Sprintf(idFmt, i), fmt.Sprintf(topicFmt, i), ka)
				if err != nil {
					errc <- fmt.Errorf("subscriber %d: %w", i, err)
					for range next { // drain
					}
					return
				}
				subs[i] = s
				f.wg.Go(func() { f.readSub(i, s) })
			}
		})
	}
	for i := range f.n {
		select {
		case next <- i:
		case err := <-errc:
			close(next)
			wg.Wait()
			return err
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	f.wg.Go(func() { f.ping(subs, time.Duration(ka)*time.Second) })
	return nil
}

func (f *fleet) mqttSubscribe(dial func(context.Context, string, string) (net.Conn, error), addr, id, topic string, ka uint16) (*mqttSub, error) {
	ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if !f.track(c) {
		c.Close()
		return nil, f.ctx.Err()
	}
	s := &mqttSub{c: c}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	steps := []struct {
		p interface {
			WriteTo(io.Writer) (int64, error)
		}
		want byte
	}{
		{&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: id, KeepAlive: ka, CleanStart: true}, packets.CONNACK},
		{&packets.Subscribe{PacketID: 1, Subscriptions: []packets.SubOptions{{Topic: topic, QoS: 1}}}, packets.SUBACK},
	}
	for _, st := range steps {
		if err := s.write(st.p); err != nil {
			return nil, err
		}
		pkt, err := packets.ReadPacket(c)
		if err != nil {
			return nil, err
		}
		switch p := pkt.Content.(type) {
		case *packets.Connack:
			if p.ReasonCode != packets.ConnackSuccess {
				return nil, fmt.Errorf("connack %s", p.Reason())
			}
		case *packets.Suback:
			if len(p.Reasons) != 1 || p.Reasons[0] != 1 {
				return nil, fmt.Errorf("suback %v, want QoS 1 granted", p.Reasons)
			}
		default:
			return nil, fmt.Errorf("got %s, want %d", pkt.PacketType(), st.want)
		}
	}
	_ = c.SetDeadline(time.Time{})
	return s, nil
}

// readSub reads subscriber i's packets until its connection closes.
func (f *fleet) readSub(i int, s *mqttSub) {
	br := bufio.NewReaderSize(s.c, 512)
	for {
		pkt, err := packets.ReadPacket(br)
		if err != nil {
			f.fail(fmt.Errorf("subscriber %d: %w", i, err))
			return
		}
		if p, ok := pkt.Content.(*packets.Publish); ok {
			f.polls.Add(1)
			f.record(i, p.Payload)
			if p.QoS == 1 {
				if err := s.write(&packets.Puback{PacketID: p.PacketID}); err != nil {
					f.fail(fmt.Errorf("subscriber %d: puback: %w", i, err))
					return
				}
			}
		}
	}
}

// ping sends each subscriber a PINGREQ once per keepalive, spread evenly
// over it, as idle MQTT clients do, until the fleet stops.
func (f *fleet) ping(subs []*mqttSub, ka time.Duration) {
	step := ka / time.Duration(len(subs))
	t := time.NewTicker(max(step, time.Millisecond))
	defer t.Stop()
	for i := 0; ; i = (i + 1) % len(subs) {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		}
		if err := subs[i].write(packets.NewControlPacket(packets.PINGREQ)); err != nil {
			f.fail(fmt.Errorf("subscriber %d: pingreq: %w", i, err))
		}
	}
}

// gripOrigin is the GRIP origin behind Pushpin for the benchmark: every
// GET /devices/<id>/commands?wait=N is answered with a hold on channel
// d-<id> for N seconds (Pushpin then answers the device with a published
// command, or at the timeout with this empty 200).
type gripOrigin struct {
	holds   atomic.Int64
	bad     atomic.Int64
	target  atomic.Int64  // holds that close reached
	reached chan struct{} // closed when holds reaches target
}

func (o *gripOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	dev, ok := strings.CutPrefix(r.URL.Path, "/devices/")
	dev, ok2 := strings.CutSuffix(dev, "/commands")
	wait, err := strconv.Atoi(r.URL.Query().Get("wait"))
	if !ok || !ok2 || dev == "" || strings.Contains(dev, "/") || err != nil || wait < 1 || wait > 300 {
		o.bad.Add(1)
		http.Error(w, "not a device poll", http.StatusNotFound)
		return
	}
	if o.holds.Add(1) == o.target.Load() {
		close(o.reached)
	}
	w.Header().Set("Grip-Hold", "response")
	w.Header().Set("Grip-Channel", "d-"+dev)
	w.Header().Set("Grip-Timeout", strconv.Itoa(wait))
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}

// startGripOrigin serves a gripOrigin on a free loopback port until the
// benchmark's cleanup; its reached channel closes at the target-th hold.
func startGripOrigin(b testing.TB, target int) (*gripOrigin, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	o := &gripOrigin{reached: make(chan struct{})}
	o.target.Store(int64(target))
	srv := &http.Server{Handler: o, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	b.Cleanup(func() { srv.Close(); <-done })
	return o, ln.Addr().String()
}

// pushpinPublish posts one command to a Pushpin channel as an
// http-response item (payload: decimal digits, no escaping needed).
func pushpinPublish(ctx context.Context, c *http.Client, url, channel string, payload []byte) error {
	body := `{"items":[{"channel":"` + channel + `","formats":{"http-response":{"code":200,"body":"` + string(payload) + `"}}}]}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pushpin publish: %s %q", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// pace calls send(i) for i in [0, n) at rate per second (each in its own
// goroutine, at most 128 in flight), the payload being the send time in
// Unix nanoseconds. It returns the rate achieved and the failures.
func pace(n, rate int, send func(i int, payload []byte) error) (achieved float64, failed int, firstErr error) {
	sem := make(chan struct{}, 128)
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
			time.Sleep(d) // the schedule, not a synchronisation
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := send(i, []byte(strconv.FormatInt(time.Now().UnixNano(), 10))); err != nil {
				mu.Lock()
				failed++
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	elapsed := time.Since(start)
	wg.Wait()
	return float64(n) / elapsed.Seconds(), failed, firstErr
}

// treeRSS is the resident memory of pid and all its descendants (Pushpin's
// runner starts condure, zurl, pushpin-proxy and pushpin-handler).
func treeRSS(b testing.TB, pid int) int64 {
	var sum int64
	for _, p := range processTree(pid) {
		sum += rss(b, p)
	}
	return sum
}

// treeCPU is treeRSS for CPU time.
func treeCPU(b testing.TB, pid int) time.Duration {
	var sum time.Duration
	for _, p := range processTree(pid) {
		sum += procCPU(b, p)
	}
	return sum
}

// processTree is pid and its descendants, from /proc/PID/task/*/children.
func processTree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", out[i]))
		for _, t := range tasks {
			data, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(data)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
	}
	return out
}
