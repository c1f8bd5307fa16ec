package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/eclipse/paho.golang/packets"
)

// mqttConn is one MQTT 5 connection of a device session: a lean client on
// paho.golang's packets codec, made for many idle sessions. It has one
// goroutine, the reader; callers write under a mutex; the keepalive is a
// runtime timer. Compared with paho.Client it drops the router, the
// manual-ack ticker and the pinger goroutines, and QoS 2.
//
// Inbound QoS 1 publishes are acknowledged by the caller (ack), and the
// PUBACKs go out in the order the publishes arrived [MQTT-4.6.0-2]: an
// ack for a later publish waits until the earlier ones are acked, and is
// then written with them.
type mqttConn struct {
	conn         net.Conn
	writeTimeout time.Duration
	maxIn        int    // largest packet accepted from the broker
	maxPacket    uint32 // the broker's maximum packet size; 0 = none
	keepalive    time.Duration

	onPublish    func(*mqttConn, *packets.Publish) // on the reader goroutine
	onDisconnect func(*packets.Disconnect)         // the broker's DISCONNECT
	onLost       func(*mqttConn, error)            // once, after done() is closed

	wmu     sync.Mutex // serializes writes
	wclosed bool       // no more writes: DISCONNECT sent or a write failed

	mu     sync.Mutex
	nextID uint16
	waits  []*mqttWait // outbound publishes and subscribes awaiting their ack
	inq    []inbound   // inbound QoS 1 publishes not yet acknowledged, in order
	cause  error       // why the connection ended
	sem    chan struct{}

	gone chan struct{} // closed when the reader ended
	wg   sync.WaitGroup
	ping timerPinger
	rd   frameReader
}

// inbound is a received QoS 1 publish awaiting its PUBACK.
type inbound struct {
	id    uint16
	acked bool
}

// mqttWait is an outbound packet awaiting the broker's answer.
type mqttWait struct {
	id     uint16
	reason byte // PUBACK reason code, or the first SUBACK reason
	err    error
	done   chan struct{}
}

// mqttOptions configure a connection.
type mqttOptions struct {
	connect      *packets.Connect
	writeTimeout time.Duration
	maxIn        int // largest packet accepted from the broker
	onPublish    func(*mqttConn, *packets.Publish)
	onDisconnect func(*packets.Disconnect)
	onLost       func(*mqttConn, error)
}

var (
	errLinkLost     = errors.New("mqtt connection lost")
	errLinkClosed   = errors.New("mqtt connection closed")
	errTooLarge     = errors.New("mqtt packet over the maximum packet size")
	errProtocol     = errors.New("mqtt protocol error")
	errPingTimeout  = errors.New("mqtt keepalive: no PINGRESP")
	errServerClosed = errors.New("broker sent DISCONNECT")
)

// disconnectError is the broker's DISCONNECT: why it ended the
// connection. It wraps errServerClosed; match it with errors.As.
type disconnectError struct{ Reason byte }

func (e *disconnectError) Error() string {
	return fmt.Sprintf("%v (reason %#x)", errServerClosed, e.Reason)
}

func (e *disconnectError) Unwrap() error { return errServerClosed }

// reasonSessionTakenOver is the DISCONNECT reason a broker sends when a
// new connection with the same client id took the session over.
const reasonSessionTakenOver = 0x8E

// connackError is a CONNACK with a failure reason code.
type connackError struct{ reason byte }

func (e *connackError) Error() string { return fmt.Sprintf("connack reason %#x", e.reason) }

var pingreq = []byte{packets.PINGREQ << 4, 0}

// mqttConnect sends CONNECT on conn and reads the CONNACK, within ctx.
// On success the reader and the keepalive run until close or a loss; on
// failure conn is closed.
func mqttConnect(ctx context.Context, conn net.Conn, o mqttOptions) (*mqttConn, *packets.Connack, error) {
	l := &mqttConn{
		conn: conn, writeTimeout: o.writeTimeout, maxIn: o.maxIn,
		onPublish: o.onPublish, onDisconnect: o.onDisconnect, onLost: o.onLost,
		gone: make(chan struct{}),
		// Our packet ids start mid-range: a broker that checks them against
		// the ids of its own unacknowledged publishes on a resumed session
		// (mochi-mqtt refuses such a SUBSCRIBE with 0x91) sees no clash
		// with those, which count up from 1.
		nextID: 0x7fff,
	}
	if l.writeTimeout <= 0 {
		l.writeTimeout = 10 * time.Second
	}
	if l.maxIn <= 0 || l.maxIn > maxRemaining+5 {
		l.maxIn = maxRemaining + 5
	}
	cp := o.connect
	l.rd.r = conn
	l.rd.max = l.maxIn
	ca, err := l.handshake(ctx, cp)
	if err != nil {
		conn.Close()
		return nil, ca, err
	}
	sendMax := 65535
	l.keepalive = time.Duration(cp.KeepAlive) * time.Second
	if p := ca.Properties; p != nil {
		if p.ReceiveMaximum != nil && *p.ReceiveMaximum > 0 {
			sendMax = int(*p.ReceiveMaximum)
		}
		if p.MaximumPacketSize != nil {
			l.maxPacket = *p.MaximumPacketSize
		}
		if p.ServerKeepAlive != nil {
			l.keepalive = time.Duration(*p.ServerKeepAlive) * time.Second
		}
	}
	// A buffered channel of empty structs holds no buffer: only a count.
	l.sem = make(chan struct{}, sendMax)
	l.wg.Add(1)
	go l.readLoop()
	if l.keepalive > 0 {
		l.ping.start(l.keepalive, func() error { return l.write(pingreq) }, func() { l.fail(errPingTimeout) })
	}
	return l, ca, nil
}

// handshake writes CONNECT and reads CONNACK before the reader starts.
func (l *mqttConn) handshake(ctx context.Context, cp *packets.Connect) (*packets.Connack, error) {
	if d, ok := ctx.Deadline(); ok {
		_ = l.conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = l.conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if stop() {
			_ = l.conn.SetDeadline(time.Time{})
		}
	}()
	if err := l.writePacket(cp); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("connect: %w", err))
	}
	pkt, err := l.rd.next()
	if err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("connect: reading connack: %w", err))
	}
	switch p := pkt.Content.(type) {
	case *packets.Connack:
		if p.ReasonCode >= 0x80 {
			return p, &connackError{p.ReasonCode}
		}
		return p, nil
	case *packets.Disconnect:
		return nil, fmt.Errorf("connect: %w", &disconnectError{Reason: p.ReasonCode})
	}
	return nil, fmt.Errorf("connect: %w: %s instead of CONNACK", errProtocol, pkt.PacketType())
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

// readLoop reads the broker's packets until the connection fails.
func (l *mqttConn) readLoop() {
	err := l.read()
	l.shutdown(err)
	l.wg.Done()
	if l.onLost != nil {
		l.onLost(l, l.err())
	}
}

// read handles every packet available, then blocks in the connection's
// Read for more (frameReader.fill), until an error.
func (l *mqttConn) read() error {
	for {
		pkt, err := l.rd.next()
		if err != nil {
			if errors.Is(err, errTooLarge) {
				l.disconnect(0x95) // packet too large
			}
			return err
		}
		l.ping.received()
		if err := l.handle(pkt); err != nil {
			return err
		}
	}
}

// handle dispatches one packet from the broker.
func (l *mqttConn) handle(pkt *packets.ControlPacket) error {
	switch p := pkt.Content.(type) {
	case *packets.Publish:
		return l.received(p)
	case *packets.Puback:
		l.answered(p.PacketID, p.ReasonCode, true)
	case *packets.Suback:
		var reason byte = 0x80
		if len(p.Reasons) > 0 {
			reason = p.Reasons[0]
		}
		l.answered(p.PacketID, reason, false)
	case *packets.Pingresp:
		l.ping.pingResp()
	case *packets.Disconnect:
		if l.onDisconnect != nil {
			l.onDisconnect(p)
		}
		return &disconnectError{Reason: p.ReasonCode}
	default:
		l.disconnect(0x82)
		return fmt.Errorf("%w: unexpected %s", errProtocol, pkt.PacketType())
	}
	return nil
}

// received checks an inbound publish, records a QoS 1 one for its ack
// and hands it on.
func (l *mqttConn) received(p *packets.Publish) error {
	bad := func(reason byte, why string) error {
		l.disconnect(reason)
		return fmt.Errorf("%w: %s", errProtocol, why)
	}
	switch {
	case p.QoS > 1:
		return bad(0x9B, "QoS 2 publish on a QoS 1 subscription")
	case p.Topic == "" || !utf8.ValidString(p.Topic):
		return bad(0x82, "publish without a valid topic (topic aliases are not allowed)")
	}
	if p.QoS == 1 {
		l.mu.Lock()
		for _, in := range l.inq {
			if in.id == p.PacketID {
				l.mu.Unlock()
				return bad(0x82, "publish reuses an unacknowledged packet id")
			}
		}
		// Not checked against our receive maximum: mosquitto resends a
		// resumed session's whole backlog at once, past it. The queue is
		// bounded all the same, by the 65535 packet ids.
		l.inq = append(l.inq, inbound{id: p.PacketID})
		l.mu.Unlock()
	}
	if l.onPublish != nil {
		l.onPublish(l, p)
	}
	return nil
}

// answered completes the wait for packet id (a PUBACK or SUBACK).
func (l *mqttConn) answered(id uint16, reason byte, puback bool) {
	l.mu.Lock()
	i := slices.IndexFunc(l.waits, func(w *mqttWait) bool { return w.id == id })
	if i < 0 {
		l.mu.Unlock()
		return // unknown id: ignored, as for a late duplicate
	}
	w := l.waits[i]
	l.waits = slices.Delete(l.waits, i, i+1)
	l.mu.Unlock()
	if puback {
		<-l.sem
	}
	w.reason = reason
	close(w.done)
}

// shutdown ends the connection after the reader stopped: fails the waits.
func (l *mqttConn) shutdown(err error) {
	l.ping.stop()
	l.mu.Lock()
	if l.cause == nil {
		l.cause = err
	}
	waits := l.waits
	l.waits = nil
	l.inq = nil
	l.mu.Unlock()
	_ = l.conn.Close()
	for _, w := range waits {
		w.err = errLinkLost
		close(w.done)
	}
	close(l.gone)
}

// fail ends the connection from outside the reader: the reader's Read
// fails and it shuts down.
func (l *mqttConn) fail(err error) {
	l.mu.Lock()
	if l.cause == nil {
		l.cause = err
	}
	l.mu.Unlock()
	_ = l.conn.Close()
}

func (l *mqttConn) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cause
}

// write sends one encoded packet, bounded by the write timeout; a failed
// write ends the connection (the broker may have half a packet).
func (l *mqttConn) write(b []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return l.writeLocked(b)
}

func (l *mqttConn) writeLocked(b []byte) error {
	if l.wclosed {
		return errLinkClosed
	}
	_ = l.conn.SetWriteDeadline(time.Now().Add(l.writeTimeout))
	if _, err := l.conn.Write(b); err != nil {
		l.wclosed = true
		l.fail(fmt.Errorf("write: %w", err))
		return err
	}
	l.ping.sent()
	return nil
}

// encoders reuse buffers: a packet is encoded whole and written with one
// Write (one TLS record), not part by part as ControlPacket.WriteTo does.
var encoders = sync.Pool{New: func() any { return new(bytes.Buffer) }}

type packetWriter interface {
	WriteTo(io.Writer) (int64, error)
}

func (l *mqttConn) writePacket(p packetWriter) error {
	buf := encoders.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= 64<<10 {
			encoders.Put(buf)
		}
	}()
	if _, err := p.WriteTo(buf); err != nil {
		return err
	}
	if l.maxPacket > 0 && uint64(buf.Len()) > uint64(l.maxPacket) {
		return fmt.Errorf("%w of the broker (%d > %d)", errTooLarge, buf.Len(), l.maxPacket)
	}
	return l.write(buf.Bytes())
}

// disconnect sends DISCONNECT with reason (best effort) and writes no
// more.
func (l *mqttConn) disconnect(reason byte) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.wclosed {
		return
	}
	l.writeTimeout = min(l.writeTimeout, 2*time.Second)
	_ = l.writeLocked([]byte{packets.DISCONNECT << 4, 1, reason})
	l.wclosed = true
}

// send writes a packet that the broker answers (QoS 1 PUBLISH, SUBSCRIBE)
// and waits for the answer or ctx. A publish waits first for room in the
// broker's receive maximum. After ctx ends the packet id stays taken
// until the answer comes or the connection ends, so a late PUBACK can
// never complete another publish.
func (l *mqttConn) send(ctx context.Context, p packetWriter, setID func(uint16), puback bool) (byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if puback {
		select {
		case l.sem <- struct{}{}:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-l.gone:
			return 0, errLinkLost
		}
	}
	w := &mqttWait{done: make(chan struct{})}
	l.mu.Lock()
	if l.cause != nil { // ending: shutdown may have failed the waits already
		l.mu.Unlock()
		return 0, errLinkLost
	}
	w.id = l.newID()
	l.waits = append(l.waits, w)
	l.mu.Unlock()
	setID(w.id)
	if err := l.writePacket(p); err != nil {
		if errors.Is(err, errTooLarge) {
			l.answered(w.id, 0, puback)
		}
		return 0, err
	}
	select {
	case <-w.done:
		return w.reason, w.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// newID is a packet id not awaiting an answer; l.mu is held. There are
// at most the broker's receive maximum (≤ 65535) waits plus subscribes.
func (l *mqttConn) newID() uint16 {
	for {
		l.nextID++
		if l.nextID == 0 {
			l.nextID = 1
		}
		free := true
		for _, w := range l.waits {
			if w.id == l.nextID {
				free = false
				break
			}
		}
		if free {
			return l.nextID
		}
	}
}

// pub publishes; QoS 1 returns after the PUBACK (errRefused for a failure
// reason code).
func (l *mqttConn) pub(ctx context.Context, p *packets.Publish) error {
	if p.QoS == 0 {
		return l.writePacket(p)
	}
	p.QoS = 1
	reason, err := l.send(ctx, p, func(id uint16) { p.PacketID = id }, true)
	if err != nil {
		return err
	}
	if reason >= 0x80 {
		return fmt.Errorf("%w: reason %#x", errRefused, reason)
	}
	return nil
}

// subscribe subscribes to one filter and returns the SUBACK's reason.
func (l *mqttConn) subscribe(ctx context.Context, o packets.SubOptions) error {
	s := &packets.Subscribe{Subscriptions: []packets.SubOptions{o}}
	reason, err := l.send(ctx, s, func(id uint16) { s.PacketID = id }, false)
	if err != nil {
		return err
	}
	if reason >= 0x80 {
		return fmt.Errorf("suback reason %#x", reason)
	}
	return nil
}

// ackID acknowledges inbound publish id: it writes the PUBACKs now due,
// those of id and of the later publishes acked before it, in order.
func (l *mqttConn) ackID(id uint16) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.mu.Lock()
	found := false
	for i := range l.inq {
		if l.inq[i].id == id && !l.inq[i].acked {
			l.inq[i].acked, found = true, true
			break
		}
	}
	n := 0
	for n < len(l.inq) && l.inq[n].acked {
		n++
	}
	var buf [16]byte
	out := buf[:0]
	for _, in := range l.inq[:n] {
		out = append(out, packets.PUBACK<<4, 2, byte(in.id>>8), byte(in.id))
	}
	l.inq = append(l.inq[:0], l.inq[n:]...)
	l.mu.Unlock()
	if !found {
		select {
		case <-l.gone:
			return errLinkLost
		default:
		}
		return fmt.Errorf("no unacknowledged publish %d on this connection", id)
	}
	if len(out) == 0 {
		return nil // due once the earlier publishes are acked
	}
	return l.writeLocked(out)
}

// close sends DISCONNECT 0x04 (disconnect with will message: presence
// turns offline once the will delay passed), closes the connection and
// waits for the reader.
func (l *mqttConn) close() { l.closeWith(0x04) }

// closeWith is close with another DISCONNECT reason: 0x00 (normal) has
// the broker discard the will.
func (l *mqttConn) closeWith(reason byte) {
	l.mu.Lock()
	if l.cause == nil {
		l.cause = errLinkClosed // before the broker's EOF can be the cause
	}
	l.mu.Unlock()
	l.disconnect(reason)
	_ = l.conn.Close()
	l.wg.Wait()
}

// done is closed when the connection ended.
func (l *mqttConn) done() <-chan struct{} { return l.gone }

// maxRemaining is the largest remaining length MQTT can encode.
const maxRemaining = 268435455

// frameReader reads MQTT packets with a bounded size: the fixed header
// is parsed before the packet is read, so a packet over max is refused
// without allocating it. It reads ahead at most len(head) bytes.
type frameReader struct {
	r      io.Reader
	max    int
	head   [32]byte
	off, n int // head[off:n] is read and not yet consumed
}

// next returns the next packet, reading until it is complete.
func (f *frameReader) next() (*packets.ControlPacket, error) {
	var hl, rl int
	for {
		var err error
		hl, rl, err = fixedHeader(f.head[f.off:f.n])
		if err != nil {
			return nil, err
		}
		if hl > 0 {
			break
		}
		if err := f.fill(); err != nil {
			return nil, err
		}
	}
	if hl+rl > f.max {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", errTooLarge, hl+rl, f.max)
	}
	have := min(f.n-f.off, hl+rl)
	var src io.Reader = bytes.NewReader(f.head[f.off : f.off+have])
	f.off += have
	if have < hl+rl {
		src = io.MultiReader(src, io.LimitReader(f.r, int64(hl+rl-have)))
	}
	pkt, err := packets.ReadPacket(src)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return pkt, nil
}

// fill blocks in Read for more bytes of the next fixed header.
func (f *frameReader) fill() error {
	if f.off > 0 {
		f.n = copy(f.head[:], f.head[f.off:f.n])
		f.off = 0
	}
	for {
		m, err := f.r.Read(f.head[f.n:])
		f.n += m
		if m > 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// fixedHeader parses an MQTT fixed header at the start of b: its length
// (0 when b does not hold all of it yet) and the remaining length.
func fixedHeader(b []byte) (hdrLen, remaining int, err error) {
	if len(b) < 2 {
		return 0, 0, nil
	}
	if t := b[0] >> 4; t == 0 {
		return 0, 0, fmt.Errorf("%w: packet type 0", errProtocol)
	}
	mult := 1
	for i := 1; i < len(b); i++ {
		remaining += int(b[i]&0x7f) * mult
		if b[i]&0x80 == 0 {
			return i + 1, remaining, nil
		}
		if i == 4 {
			return 0, 0, fmt.Errorf("%w: remaining length over 4 bytes", errProtocol)
		}
		mult *= 128
	}
	return 0, 0, nil
}
