package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// mosquitto starts a mosquitto broker on a free loopback port with extra
// config lines, stopped when the test ends. A missing mosquitto skips the
// test, or fails it under CI=true.
func mosquitto(t *testing.T, extra string) (addr string, cmd *exec.Cmd) {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/mosquitto"); serr == nil {
			bin = "/usr/sbin/mosquitto"
		} else if os.Getenv("CI") == "true" {
			t.Fatal("mosquitto is required (CI=true)")
		} else {
			t.Skip("mosquitto not installed")
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	user := ""
	if os.Geteuid() == 0 {
		user = "user root\n"
	}
	conf := fmt.Sprintf("%slistener %d 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type error\n%s\n", user, port, extra)
	path := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd = exec.Command(bin, "-c", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("mosquitto output:\n%s", out.String())
		}
	})
	addr = "127.0.0.1:" + strconv.Itoa(port)
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return addr, cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto not accepting: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// recorder is a net.Conn that keeps a copy of every write.
type recorder struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (r *recorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	r.writes = append(r.writes, append([]byte(nil), b...))
	r.mu.Unlock()
	return r.Conn.Write(b)
}

func (r *recorder) since(n int) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.writes[n:]...)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.writes)
}

// testClient is a mqttConn under test with its inbound publishes and its
// loss on channels.
type testClient struct {
	*mqttConn
	rec  *recorder
	pubs chan *packets.Publish
	lost chan error
}

type clientOpts struct {
	id        string
	clean     bool
	keepalive uint16
	maxIn     int
	advertise bool // send maxIn as the CONNECT's maximum packet size
	will      string
}

func dialClient(t *testing.T, addr string, o clientOpts) (*testClient, *packets.Connack, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tc := &testClient{rec: &recorder{Conn: conn}, pubs: make(chan *packets.Publish, 100), lost: make(chan error, 1)}
	expiry, recvMax := uint32(60), uint16(10)
	cp := &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: o.id, CleanStart: o.clean, KeepAlive: o.keepalive,
		Properties: &packets.Properties{SessionExpiryInterval: &expiry, ReceiveMaximum: &recvMax}}
	if o.advertise {
		m := uint32(o.maxIn)
		cp.Properties.MaximumPacketSize = &m
	}
	if o.will != "" {
		cp.WillFlag, cp.WillRetain, cp.WillQOS, cp.WillTopic, cp.WillMessage = true, false, 1, o.will, []byte("offline")
		cp.WillProperties = &packets.Properties{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, ca, err := mqttConnect(ctx, tc.rec, mqttOptions{connect: cp, writeTimeout: 5 * time.Second, maxIn: o.maxIn,
		onPublish: func(_ *mqttConn, p *packets.Publish) { tc.pubs <- p },
		onLost:    func(_ *mqttConn, err error) { tc.lost <- err },
	})
	if err != nil {
		return nil, ca, err
	}
	tc.mqttConn = l
	t.Cleanup(l.close)
	return tc, ca, nil
}

func mustClient(t *testing.T, addr string, o clientOpts) *testClient {
	t.Helper()
	c, _, err := dialClient(t, addr, o)
	if err != nil {
		t.Fatalf("connect %s: %v", o.id, err)
	}
	return c
}

func (c *testClient) sub(t *testing.T, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.subscribe(ctx, packets.SubOptions{Topic: filter, QoS: 1}); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
}

func (c *testClient) send(t *testing.T, topic, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.pub(ctx, &packets.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)}); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

func (c *testClient) next(t *testing.T) *packets.Publish {
	t.Helper()
	select {
	case p := <-c.pubs:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no publish within 5s")
		return nil
	}
}

func (c *testClient) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case p := <-c.pubs:
		t.Fatalf("unexpected publish %s %q", p.Topic, p.Payload)
	case <-time.After(d):
	}
}

func TestMQTTConnConnect(t *testing.T) {
	open, _ := mosquitto(t, "")
	closed, _ := mosquitto(t, "allow_anonymous false")
	limited, _ := mosquitto(t, "max_packet_size 2000")
	for _, tc := range []struct {
		name, addr   string
		wantConnack  byte // >= 0x80: refused
		wantMaxPkt   uint32
		publishBytes int
		wantPubErr   error
	}{
		{name: "accepted", addr: open, publishBytes: 100},
		{name: "refused", addr: closed, wantConnack: 0x87},
		{name: "broker maximum packet size", addr: limited, wantMaxPkt: 2000, publishBytes: 3000, wantPubErr: errTooLarge},
		{name: "under the broker maximum", addr: limited, wantMaxPkt: 2000, publishBytes: 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, ca, err := dialClient(t, tc.addr, clientOpts{id: "c-" + strings.ReplaceAll(tc.name, " ", "-"), clean: true, keepalive: 30})
			if tc.wantConnack >= 0x80 {
				var ce *connackError
				if !errors.As(err, &ce) || ce.reason != tc.wantConnack || !strings.Contains(err.Error(), "connack reason 0x87") {
					t.Fatalf("connect: %v (connack %+v), want connack reason %#x", err, ca, tc.wantConnack)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.maxPacket != tc.wantMaxPkt {
				t.Errorf("broker maximum packet size %d, want %d", c.maxPacket, tc.wantMaxPkt)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = c.publish(ctx, "t/x", 1, bytes.Repeat([]byte("x"), tc.publishBytes))
			if !errors.Is(err, tc.wantPubErr) {
				t.Fatalf("publish of %d bytes: %v, want %v", tc.publishBytes, err, tc.wantPubErr)
			}
			// The connection still works after a refused publish.
			if err := c.publish(ctx, "t/x", 1, []byte("small")); err != nil {
				t.Fatalf("publish after: %v", err)
			}
		})
	}
}

// TestMQTTConnPublishReachesSubscriber: a QoS 1 publish returns after
// the PUBACK and the subscriber gets it; a cancelled wait returns at once.
func TestMQTTConnPublishReachesSubscriber(t *testing.T) {
	addr, _ := mosquitto(t, "")
	sub := mustClient(t, addr, clientOpts{id: "sub", clean: true, keepalive: 30})
	sub.sub(t, "t/#")
	pub := mustClient(t, addr, clientOpts{id: "pub", clean: true, keepalive: 30})
	for i := range 20 {
		pub.send(t, "t/a", fmt.Sprint(i))
	}
	for i := range 20 {
		p := sub.next(t)
		if string(p.Payload) != fmt.Sprint(i) || p.Topic != "t/a" || p.QoS != 1 {
			t.Fatalf("got %s %q qos %d, want t/a %d", p.Topic, p.Payload, p.QoS, i)
		}
		if err := sub.ack(&command{pid: p.PacketID}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := pub.publish(ctx, "t/a", 1, []byte("late")); !errors.Is(err, context.Canceled) {
		t.Errorf("publish with a cancelled context: %v", err)
	}
	pub.close()
	if err := pub.publish(context.Background(), "t/a", 1, []byte("closed")); err == nil {
		t.Error("publish on a closed connection succeeded")
	}
}

// TestMQTTConnAcksInOrder: PUBACKs go out in the order the publishes
// arrived, whatever the order of the acks, on the connection they came
// on; what was not acked is redelivered on the next connection.
func TestMQTTConnAcksInOrder(t *testing.T) {
	addr, _ := mosquitto(t, "")
	app := mustClient(t, addr, clientOpts{id: "app", clean: true, keepalive: 30})
	app.sub(t, "status")
	dev := mustClient(t, addr, clientOpts{id: "dev", clean: true, keepalive: 30, will: "status"})
	dev.sub(t, "cmd")
	for _, s := range []string{"c1", "c2", "c3", "c4"} {
		app.send(t, "cmd", s)
	}
	var ps []*packets.Publish
	for range 4 {
		ps = append(ps, dev.next(t))
	}
	for i, p := range ps {
		if string(p.Payload) != fmt.Sprintf("c%d", i+1) {
			t.Fatalf("publish %d is %q", i, p.Payload)
		}
	}
	n := dev.rec.count()
	ack := func(p *packets.Publish) {
		t.Helper()
		if err := dev.ack(&command{pid: p.PacketID}); err != nil {
			t.Fatalf("ack %q: %v", p.Payload, err)
		}
	}
	ack(ps[2]) // c3, c2 first: nothing is due
	ack(ps[1])
	if w := dev.rec.since(n); len(w) != 0 {
		t.Fatalf("PUBACKs written before the first publish was acked: % x", w)
	}
	ack(ps[0]) // now c1, c2, c3 in order, in one write
	var want []byte
	for _, p := range ps[:3] {
		want = append(want, 0x40, 2, byte(p.PacketID>>8), byte(p.PacketID))
	}
	if w := dev.rec.since(n); len(w) != 1 || !bytes.Equal(w[0], want) {
		t.Fatalf("writes % x, want one write % x", w, want)
	}
	if err := dev.ack(&command{pid: ps[0].PacketID}); err == nil {
		t.Error("a second ack of the same publish succeeded")
	}
	// c4 is not acked: the broker redelivers it to the next connection
	// (clean start false resumes the session), and only it.
	// mosquitto handles one packet of a connection at a time, interleaved
	// with others: wait for the will, sent after the PUBACKs were handled.
	dev.close()
	if p := app.next(t); p.Topic != "status" {
		t.Fatalf("got %s, want the will", p.Topic)
	}
	dev2 := mustClient(t, addr, clientOpts{id: "dev", keepalive: 30})
	if p := dev2.next(t); string(p.Payload) != "c4" || !p.Duplicate {
		t.Fatalf("redelivered %q dup=%v id %d, want c4 dup; ids %d %d %d %d", p.Payload, p.Duplicate, p.PacketID, ps[0].PacketID, ps[1].PacketID, ps[2].PacketID, ps[3].PacketID)
	}
	dev2.quiet(t, 300*time.Millisecond)
	if err := dev.ack(&command{pid: ps[3].PacketID}); err == nil {
		t.Error("ack on the closed connection succeeded")
	}
}

// TestMQTTConnRefusesOversize: a packet over the limit is refused before
// it is read (DISCONNECT 0x95) and the connection ends.
func TestMQTTConnRefusesOversize(t *testing.T) {
	addr, _ := mosquitto(t, "")
	app := mustClient(t, addr, clientOpts{id: "app", clean: true, keepalive: 30})
	dev := mustClient(t, addr, clientOpts{id: "dev", clean: true, keepalive: 30, maxIn: 1024}) // not advertised
	dev.sub(t, "cmd")
	app.send(t, "cmd", "small")
	dev.next(t)
	n := dev.rec.count()
	app.send(t, "cmd", strings.Repeat("x", 4096))
	select {
	case err := <-dev.lost:
		if !errors.Is(err, errTooLarge) {
			t.Fatalf("lost with %v, want errTooLarge", err)
		}
	case p := <-dev.pubs:
		t.Fatalf("oversize publish of %d bytes delivered", len(p.Payload))
	case <-time.After(5 * time.Second):
		t.Fatal("connection not ended by an oversize packet")
	}
	if w := dev.rec.since(n); len(w) != 1 || !bytes.Equal(w[0], []byte{0xe0, 1, 0x95}) {
		t.Errorf("writes % x, want DISCONNECT 0x95", w)
	}

	// Advertised, the broker does not send it at all.
	dev2 := mustClient(t, addr, clientOpts{id: "dev2", clean: true, keepalive: 30, maxIn: 1024, advertise: true})
	dev2.sub(t, "cmd")
	app.send(t, "cmd", strings.Repeat("x", 4096))
	app.send(t, "cmd", "after")
	if p := dev2.next(t); string(p.Payload) != "after" {
		t.Fatalf("got %d bytes, want the small publish", len(p.Payload))
	}
}

// TestMQTTConnKeepalive: with the broker frozen, the missing PINGRESP
// ends the connection within two keepalive intervals.
func TestMQTTConnKeepalive(t *testing.T) {
	addr, broker := mosquitto(t, "")
	dev := mustClient(t, addr, clientOpts{id: "dev", clean: true, keepalive: 1})
	// Idle but answered: still up after a few intervals.
	select {
	case err := <-dev.lost:
		t.Fatalf("lost while the broker answers: %v", err)
	case <-time.After(2500 * time.Millisecond):
	}
	if err := broker.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer broker.Process.Signal(syscall.SIGCONT)
	start := time.Now()
	select {
	case err := <-dev.lost:
		if !errors.Is(err, errPingTimeout) {
			t.Fatalf("lost with %v, want errPingTimeout", err)
		}
		if d := time.Since(start); d > 2500*time.Millisecond {
			t.Errorf("loss detected after %s, want within 2 intervals", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("frozen broker not detected")
	}
	select {
	case <-dev.done():
	default:
		t.Error("done not closed after the loss")
	}
}

// TestMQTTConnCloseFiresWill: close sends DISCONNECT 0x04, so the broker
// publishes the will (presence offline).
func TestMQTTConnCloseFiresWill(t *testing.T) {
	addr, _ := mosquitto(t, "")
	app := mustClient(t, addr, clientOpts{id: "app", clean: true, keepalive: 30})
	app.sub(t, "status")
	dev := mustClient(t, addr, clientOpts{id: "dev", clean: true, keepalive: 30, will: "status"})
	n := dev.rec.count()
	dev.close()
	if w := dev.rec.since(n); len(w) != 1 || !bytes.Equal(w[0], []byte{0xe0, 1, 0x04}) {
		t.Errorf("writes % x, want DISCONNECT 0x04", w)
	}
	if p := app.next(t); p.Topic != "status" || string(p.Payload) != "offline" {
		t.Fatalf("got %s %q, want the will", p.Topic, p.Payload)
	}
	select {
	case err := <-dev.lost:
		if !errors.Is(err, errLinkClosed) {
			t.Errorf("ended with %v, want errLinkClosed", err)
		}
	case <-time.After(time.Second):
		t.Error("onLost not called on close")
	}
}

// FuzzFrameReader: any bytes from a broker give packets or an error,
// never a panic, a packet over the limit, or a read past the limit.
func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{0xd0, 0})                                    // PINGRESP
	f.Add([]byte{0x40, 2, 0, 1, 0x32, 7, 0, 1, 't', 0, 1, 0}) // PUBACK, PUBLISH
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0x7f})               // oversize
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 1})            // bad length
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 64
		fr := frameReader{r: bytes.NewReader(data), max: max}
		for range 100 {
			if hl, rl, err := fixedHeader(fr.head[fr.off:fr.n]); err == nil && (hl > 5 || rl > maxRemaining) {
				t.Fatalf("fixed header %d + %d", hl, rl)
			}
			if _, err := fr.next(); err != nil {
				return
			}
		}
	})
}

// TestFixedHeader: lengths as MQTT encodes them.
func TestFixedHeader(t *testing.T) {
	for _, tc := range []struct {
		in      []byte
		hl, rl  int
		wantErr bool
	}{
		{in: []byte{0x30}, hl: 0},
		{in: []byte{0x30, 0}, hl: 2, rl: 0},
		{in: []byte{0x30, 0x7f}, hl: 2, rl: 127},
		{in: []byte{0x30, 0x80}, hl: 0},
		{in: []byte{0x30, 0x80, 1}, hl: 3, rl: 128},
		{in: []byte{0x30, 0xff, 0xff, 0xff, 0x7f}, hl: 5, rl: maxRemaining},
		{in: []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0}, wantErr: true},
		{in: []byte{0x00, 0}, wantErr: true},
	} {
		hl, rl, err := fixedHeader(tc.in)
		if (err != nil) != tc.wantErr || hl != tc.hl || rl != tc.rl {
			t.Errorf("fixedHeader(% x) = %d, %d, %v; want %d, %d, err %v", tc.in, hl, rl, err, tc.hl, tc.rl, tc.wantErr)
		}
	}
}
