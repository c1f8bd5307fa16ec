package mqtt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/edgeshim/edgeshim/bridge/mqtt/mqtttest"
	"github.com/edgeshim/edgeshim/limits/park"
)

// mosquitto starts a mosquitto broker (see mqtttest.Mosquitto).
var mosquitto = mqtttest.Mosquitto

// recorder is a net.Conn that keeps a copy of every write.
type recorder struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

// NetConn returns the connection beneath (the parker finds the socket
// there).
func (r *recorder) NetConn() net.Conn { return r.Conn }

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
	*Conn
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
	unparked  bool // a goroutine reads, as without a Parker
}

func dialClient(t *testing.T, addr string, o clientOpts) (*testClient, *packets.Connack, error) {
	t.Helper()
	var p *park.Parker
	if !o.unparked {
		p = testParker(t)
	}
	return dialClientWith(t, addr, o, p)
}

// dialClientWith connects a client whose reader parks in p (nil: a
// goroutine reads).
func dialClientWith(t *testing.T, addr string, o clientOpts, p *park.Parker) (*testClient, *packets.Connack, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tc := &testClient{rec: &recorder{Conn: Pollable(conn)}, pubs: make(chan *packets.Publish, 100), lost: make(chan error, 1)}
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
	opts := Options{Connect: cp, WriteTimeout: 5 * time.Second, MaxIn: o.maxIn, Parker: p,
		OnPublish: func(_ *Conn, p *packets.Publish) { tc.pubs <- p },
		OnLost:    func(_ *Conn, err error) { tc.lost <- err },
	}
	l, ca, err := Connect(ctx, tc.rec, opts)
	if err != nil {
		return nil, ca, err
	}
	tc.Conn = l
	t.Cleanup(l.Close)
	return tc, ca, nil
}

// testParker is a Parker closed when the test ends.
func testParker(t *testing.T) *park.Parker {
	p := park.New()
	t.Cleanup(func() { p.Close() })
	return p
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
	if err := c.Subscribe(ctx, packets.SubOptions{Topic: filter, QoS: 1}); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
}

func (c *testClient) send(t *testing.T, topic, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Publish(ctx, &packets.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)}); err != nil {
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
		{name: "broker maximum packet size", addr: limited, wantMaxPkt: 2000, publishBytes: 3000, wantPubErr: ErrTooLarge},
		{name: "under the broker maximum", addr: limited, wantMaxPkt: 2000, publishBytes: 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, ca, err := dialClient(t, tc.addr, clientOpts{id: "c-" + strings.ReplaceAll(tc.name, " ", "-"), clean: true, keepalive: 30})
			if tc.wantConnack >= 0x80 {
				var ce *ConnackError
				if !errors.As(err, &ce) || ce.Reason != tc.wantConnack || !strings.Contains(err.Error(), "connack reason 0x87") {
					t.Fatalf("connect: %v (connack %+v), want connack reason %#x", err, ca, tc.wantConnack)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.MaxPacket() != tc.wantMaxPkt {
				t.Errorf("broker maximum packet size %d, want %d", c.MaxPacket(), tc.wantMaxPkt)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = c.Publish(ctx, &packets.Publish{Topic: "t/x", QoS: 1, Payload: bytes.Repeat([]byte("x"), tc.publishBytes)})
			if !errors.Is(err, tc.wantPubErr) {
				t.Fatalf("publish of %d bytes: %v, want %v", tc.publishBytes, err, tc.wantPubErr)
			}
			// The connection still works after a refused publish.
			if err := c.Publish(ctx, &packets.Publish{Topic: "t/x", QoS: 1, Payload: []byte("small")}); err != nil {
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
		if err := sub.Ack(p.PacketID); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := pub.Publish(ctx, &packets.Publish{Topic: "t/a", QoS: 1, Payload: []byte("late")}); !errors.Is(err, context.Canceled) {
		t.Errorf("publish with a cancelled context: %v", err)
	}
	pub.Close()
	if err := pub.Publish(context.Background(), &packets.Publish{Topic: "t/a", QoS: 1, Payload: []byte("closed")}); err == nil {
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
		if err := dev.Ack(p.PacketID); err != nil {
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
	if err := dev.Ack(ps[0].PacketID); err == nil {
		t.Error("a second ack of the same publish succeeded")
	}
	// c4 is not acked: the broker redelivers it to the next connection
	// (clean start false resumes the session), and only it.
	// mosquitto handles one packet of a connection at a time, interleaved
	// with others: wait for the will, sent after the PUBACKs were handled.
	dev.Close()
	if p := app.next(t); p.Topic != "status" {
		t.Fatalf("got %s, want the will", p.Topic)
	}
	dev2 := mustClient(t, addr, clientOpts{id: "dev", keepalive: 30})
	if p := dev2.next(t); string(p.Payload) != "c4" || !p.Duplicate {
		t.Fatalf("redelivered %q dup=%v id %d, want c4 dup; ids %d %d %d %d", p.Payload, p.Duplicate, p.PacketID, ps[0].PacketID, ps[1].PacketID, ps[2].PacketID, ps[3].PacketID)
	}
	dev2.quiet(t, 300*time.Millisecond)
	if err := dev.Ack(ps[3].PacketID); err == nil {
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
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("lost with %v, want ErrTooLarge", err)
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
		if !errors.Is(err, ErrPingTimeout) {
			t.Fatalf("lost with %v, want ErrPingTimeout", err)
		}
		if d := time.Since(start); d > 2500*time.Millisecond {
			t.Errorf("loss detected after %s, want within 2 intervals", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("frozen broker not detected")
	}
	select {
	case <-dev.Done():
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
	dev.Close()
	if w := dev.rec.since(n); len(w) != 1 || !bytes.Equal(w[0], []byte{0xe0, 1, 0x04}) {
		t.Errorf("writes % x, want DISCONNECT 0x04", w)
	}
	if p := app.next(t); p.Topic != "status" || string(p.Payload) != "offline" {
		t.Fatalf("got %s %q, want the will", p.Topic, p.Payload)
	}
	select {
	case err := <-dev.lost:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("ended with %v, want ErrClosed", err)
		}
	case <-time.After(time.Second):
		t.Error("onLost not called on close")
	}
}

// FuzzFrameReader: any bytes from a broker, split anywhere across
// reads, give the same packets as read whole, or an error; never a
// panic, a packet over the limit, or a buffer past the limit.
func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{0xd0, 0}, uint8(1))                                    // PINGRESP
	f.Add([]byte{0x40, 2, 0, 1, 0x32, 7, 0, 1, 't', 0, 1, 0}, uint8(3)) // PUBACK, PUBLISH
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0x7f}, uint8(2))               // oversize
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0xff, 1}, uint8(1))            // bad length
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		const max = 64
		read := func(r io.Reader) (types []byte, err error) {
			fr := frameReader{max: max}
			defer fr.drop()
			// Each round reads a byte or more, or takes a packet of two or more.
			for range 2*len(data) + 2 {
				pkt, err := fr.next()
				if err != nil {
					return types, err
				}
				if pkt == nil {
					if len(fr.buf)-fr.off > max {
						t.Fatalf("%d bytes buffered, limit %d", len(fr.buf)-fr.off, max)
					}
					fr.release() // as a reader parking between reads
					if err := fr.fill(r); err != nil {
						return types, err
					}
					continue
				}
				types = append(types, pkt.FixedHeader.Type)
			}
			return types, nil
		}
		whole, werr := read(bytes.NewReader(data))
		split, serr := read(iotest.OneByteReader(bytes.NewReader(data)))
		if chunk > 1 {
			split, serr = read(&chunkReader{data: data, n: int(chunk)})
		}
		if !bytes.Equal(whole, split) || (werr == io.EOF) != (serr == io.EOF) {
			t.Fatalf("whole: %v %v; split in %d-byte reads: %v %v", whole, werr, chunk, split, serr)
		}
	})
}

// chunkReader returns data n bytes at a time.
type chunkReader struct {
	data []byte
	n    int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	m := copy(p, c.data[:min(c.n, len(c.data))])
	c.data = c.data[m:]
	return m, nil
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
		{in: []byte{0x30, 0xff, 0xff, 0xff, 0x7f}, hl: 5, rl: MaxRemaining},
		{in: []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0}, wantErr: true},
		{in: []byte{0x00, 0}, wantErr: true},
	} {
		hl, rl, err := fixedHeader(tc.in)
		if (err != nil) != tc.wantErr || hl != tc.hl || rl != tc.rl {
			t.Errorf("fixedHeader(% x) = %d, %d, %v; want %d, %d, err %v", tc.in, hl, rl, err, tc.hl, tc.rl, tc.wantErr)
		}
	}
}
