// Package mqtt is edgeshim's MQTT 5 client: a lean client on paho.golang's
// packets codec, made for many idle connections (one per device session).
// Publish (QoS 0 and 1), one-filter Subscribe, inbound publishes handed to a
// callback and acknowledged by the caller (Ack; PUBACKs go out in arrival
// order), keepalive on one runtime timer, and a reader that parks in a
// park.Parker while the connection is idle, so an idle connection holds no
// goroutine. QoS 2 is not supported.
package mqtt

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
	"github.com/edgeshim/edgeshim/limits/park"
)

// Conn is one MQTT 5 connection. Compared with paho.Client it drops the
// router, the manual-ack ticker, the pinger goroutines and QoS 2. Callers
// write under a mutex; the keepalive is a runtime timer; the reader runs
// only while there is something to read (see Options.Parker).
//
// Inbound QoS 1 publishes are acknowledged by the caller (Ack), and the
// PUBACKs go out in the order the publishes arrived [MQTT-4.6.0-2]: an
// ack for a later publish waits until the earlier ones are acked, and is
// then written with them.
type Conn struct {
	conn         net.Conn
	writeTimeout time.Duration
	maxIn        int    // largest packet accepted from the broker
	maxPacket    uint32 // the broker's maximum packet size; 0 = none
	keepalive    time.Duration

	onPublish    func(*Conn, *packets.Publish) // on the reader
	onDisconnect func(*packets.Disconnect)     // the broker's DISCONNECT
	onLost       func(*Conn, error)            // once, after Done is closed

	wmu     sync.Mutex // serializes writes
	wclosed bool       // no more writes: DISCONNECT sent or a write failed

	mu     sync.Mutex
	nextID uint16
	waits  []*wait   // outbound publishes and subscribes awaiting their ack
	inq    []inbound // inbound QoS 1 publishes not yet acknowledged, in order
	cause  error     // why the connection ended
	sem    chan struct{}

	gone chan struct{}  // closed when the reader ended
	wg   sync.WaitGroup // the reader's life: from the CONNACK to its end
	ping timerPinger
	rd   frameReader
	pc   *pollConn    // the socket beneath conn, if it can be read without blocking
	h    *park.Handle // the parked reader's; nil: a goroutine reads
}

// inbound is a received QoS 1 publish awaiting its PUBACK.
type inbound struct {
	id    uint16
	acked bool
}

// wait is an outbound packet awaiting the broker's answer.
type wait struct {
	id     uint16
	reason byte // PUBACK reason code, or the first SUBACK reason
	err    error
	done   chan struct{}
}

// Options configure a connection.
type Options struct {
	// Connect is the CONNECT packet to send. Required.
	Connect *packets.Connect
	// WriteTimeout bounds each write. Default: 10s.
	WriteTimeout time.Duration
	// MaxIn is the largest packet accepted from the broker; a larger one
	// ends the connection (DISCONNECT 0x95) before it is read. Default:
	// the largest MQTT can encode.
	MaxIn int
	// OnPublish receives each inbound PUBLISH, on the reader; a QoS 1 one
	// is acknowledged with Ack. Default: none (QoS 1 ones stay unacked).
	OnPublish func(*Conn, *packets.Publish)
	// OnDisconnect receives the broker's DISCONNECT. Default: none.
	OnDisconnect func(*packets.Disconnect)
	// OnLost is called once when the connection ended (Done is closed),
	// with the cause. Default: none.
	OnLost func(*Conn, error)
	// Parker, if set, holds the reader while the connection is idle: no
	// goroutine waits on it. It applies to connections whose socket is
	// wrapped by Pollable (beneath any TLS); other connections, and
	// Parkers without a poller, get a goroutine blocked in Read. Default:
	// nil (a goroutine).
	Parker *park.Parker
}

var (
	// ErrLost: the connection ended before the broker answered.
	ErrLost = errors.New("mqtt connection lost")
	// ErrClosed: the connection was closed by Close or CloseWith.
	ErrClosed = errors.New("mqtt connection closed")
	// ErrTooLarge: a packet over the maximum packet size (the broker's,
	// for an outbound one; Options.MaxIn, for an inbound one).
	ErrTooLarge = errors.New("mqtt packet over the maximum packet size")
	// ErrProtocol: the broker broke the protocol.
	ErrProtocol = errors.New("mqtt protocol error")
	// ErrPingTimeout: no PINGRESP within a keepalive interval.
	ErrPingTimeout = errors.New("mqtt keepalive: no PINGRESP")
	// ErrServerClosed: the broker sent DISCONNECT (see DisconnectError).
	ErrServerClosed = errors.New("broker sent DISCONNECT")
	// ErrRefused: a PUBACK or SUBACK with a failure reason code.
	ErrRefused = errors.New("mqtt: refused by the broker")
)

// DisconnectError is the broker's DISCONNECT: why it ended the
// connection. It wraps ErrServerClosed; match it with errors.As.
type DisconnectError struct{ Reason byte }

func (e *DisconnectError) Error() string {
	return fmt.Sprintf("%v (reason %#x)", ErrServerClosed, e.Reason)
}

func (e *DisconnectError) Unwrap() error { return ErrServerClosed }

// ReasonSessionTakenOver is the DISCONNECT reason a broker sends when a
// new connection with the same client id took the session over.
const ReasonSessionTakenOver = 0x8E

// ConnackError is a CONNACK with a failure reason code.
type ConnackError struct{ Reason byte }

func (e *ConnackError) Error() string { return fmt.Sprintf("connack reason %#x", e.Reason) }

var pingreq = []byte{packets.PINGREQ << 4, 0}

// Connect sends CONNECT on conn and reads the CONNACK, within ctx.
// On success the reader and the keepalive run until Close or a loss; on
// failure conn is closed. The CONNACK is returned on a refusal too
// (with a *ConnackError).
func Connect(ctx context.Context, conn net.Conn, o Options) (*Conn, *packets.Connack, error) {
	l := &Conn{
		conn: conn, writeTimeout: o.WriteTimeout, maxIn: o.MaxIn,
		onPublish: o.OnPublish, onDisconnect: o.OnDisconnect, onLost: o.OnLost,
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
	if l.maxIn <= 0 || l.maxIn > MaxRemaining+5 {
		l.maxIn = MaxRemaining + 5
	}
	cp := o.Connect
	l.rd.max = l.maxIn
	ca, err := l.handshake(ctx, cp)
	if err != nil {
		conn.Close()
		l.rd.drop()
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
	l.startReader(o.Parker)
	if l.keepalive > 0 {
		l.ping.start(l.keepalive, func() error { return l.write(pingreq) }, func() { l.fail(ErrPingTimeout) })
	}
	return l, ca, nil
}

// handshake writes CONNECT and reads CONNACK before the reader starts.
func (l *Conn) handshake(ctx context.Context, cp *packets.Connect) (*packets.Connack, error) {
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
	var pkt *packets.ControlPacket
	for pkt == nil {
		var err error
		if pkt, err = l.rd.next(); err == nil && pkt == nil {
			err = l.rd.fill(l.conn)
		}
		if err != nil {
			return nil, ctxErr(ctx, fmt.Errorf("connect: reading connack: %w", err))
		}
	}
	switch p := pkt.Content.(type) {
	case *packets.Connack:
		if p.ReasonCode >= 0x80 {
			return p, &ConnackError{p.ReasonCode}
		}
		return p, nil
	case *packets.Disconnect:
		return nil, fmt.Errorf("connect: %w", &DisconnectError{Reason: p.ReasonCode})
	}
	return nil, fmt.Errorf("connect: %w: %s instead of CONNACK", ErrProtocol, pkt.PacketType())
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

// handle dispatches one packet from the broker.
func (l *Conn) handle(pkt *packets.ControlPacket) error {
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
		return &DisconnectError{Reason: p.ReasonCode}
	default:
		l.disconnect(0x82)
		return fmt.Errorf("%w: unexpected %s", ErrProtocol, pkt.PacketType())
	}
	return nil
}

// received checks an inbound publish, records a QoS 1 one for its ack
// and hands it on.
func (l *Conn) received(p *packets.Publish) error {
	bad := func(reason byte, why string) error {
		l.disconnect(reason)
		return fmt.Errorf("%w: %s", ErrProtocol, why)
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
func (l *Conn) answered(id uint16, reason byte, puback bool) {
	l.mu.Lock()
	i := slices.IndexFunc(l.waits, func(w *wait) bool { return w.id == id })
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
func (l *Conn) shutdown(err error) {
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
		w.err = ErrLost
		close(w.done)
	}
	close(l.gone)
}

// fail ends the connection from outside the reader (the keepalive, a
// failed write; the write lock may be held): the reader's Read fails, or
// a parked reader is ended on a goroutine of its own.
func (l *Conn) fail(err error) {
	l.setCause(err)
	l.interrupt(true)
}

// setCause records why the connection ends, unless it is known already.
func (l *Conn) setCause(err error) {
	l.mu.Lock()
	if l.cause == nil {
		l.cause = err
	}
	l.mu.Unlock()
}

// Err returns why the connection ended; nil while it is up.
func (l *Conn) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cause
}

// write sends one encoded packet, bounded by the write timeout; a failed
// write ends the connection (the broker may have half a packet).
func (l *Conn) write(b []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return l.writeLocked(b)
}

func (l *Conn) writeLocked(b []byte) error {
	if l.wclosed {
		return ErrClosed
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

func (l *Conn) writePacket(p packetWriter) error {
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
		return fmt.Errorf("%w of the broker (%d > %d)", ErrTooLarge, buf.Len(), l.maxPacket)
	}
	return l.write(buf.Bytes())
}

// disconnect sends DISCONNECT with reason (best effort) and writes no
// more.
func (l *Conn) disconnect(reason byte) {
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
func (l *Conn) send(ctx context.Context, p packetWriter, setID func(uint16), puback bool) (byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if puback {
		select {
		case l.sem <- struct{}{}:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-l.gone:
			return 0, ErrLost
		}
	}
	w := &wait{done: make(chan struct{})}
	l.mu.Lock()
	if l.cause != nil { // ending: shutdown may have failed the waits already
		l.mu.Unlock()
		return 0, ErrLost
	}
	w.id = l.newID()
	l.waits = append(l.waits, w)
	l.mu.Unlock()
	setID(w.id)
	if err := l.writePacket(p); err != nil {
		if errors.Is(err, ErrTooLarge) {
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
func (l *Conn) newID() uint16 {
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

// Publish publishes; QoS 1 returns after the PUBACK (ErrRefused for a
// failure reason code). It sets p's packet id.
func (l *Conn) Publish(ctx context.Context, p *packets.Publish) error {
	if p.QoS == 0 {
		return l.writePacket(p)
	}
	p.QoS = 1
	reason, err := l.send(ctx, p, func(id uint16) { p.PacketID = id }, true)
	if err != nil {
		return err
	}
	if reason >= 0x80 {
		return fmt.Errorf("%w: reason %#x", ErrRefused, reason)
	}
	return nil
}

// Subscribe subscribes to one filter; a SUBACK with a failure reason is
// ErrRefused.
func (l *Conn) Subscribe(ctx context.Context, o packets.SubOptions) error {
	s := &packets.Subscribe{Subscriptions: []packets.SubOptions{o}}
	reason, err := l.send(ctx, s, func(id uint16) { s.PacketID = id }, false)
	if err != nil {
		return err
	}
	if reason >= 0x80 {
		return fmt.Errorf("%w: suback reason %#x", ErrRefused, reason)
	}
	return nil
}

// Ack acknowledges inbound QoS 1 publish id: it writes the PUBACKs now
// due, those of id and of the later publishes acked before it, in order.
// Only the connection the publish came on can acknowledge it.
func (l *Conn) Ack(id uint16) error {
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
			return ErrLost
		default:
		}
		return fmt.Errorf("no unacknowledged publish %d on this connection", id)
	}
	if len(out) == 0 {
		return nil // due once the earlier publishes are acked
	}
	return l.writeLocked(out)
}

// Close sends DISCONNECT 0x04 (disconnect with will message: presence
// turns offline once the will delay passed), closes the connection and
// waits for the reader.
func (l *Conn) Close() { l.CloseWith(0x04) }

// CloseWith is Close with another DISCONNECT reason: 0x00 (normal) has
// the broker discard the will.
func (l *Conn) CloseWith(reason byte) {
	l.setCause(ErrClosed) // before the broker's EOF can be the cause
	l.disconnect(reason)
	l.interrupt(false)
	l.wg.Wait()
}

// Unacked is the number of inbound QoS 1 publishes whose PUBACK is not
// written yet.
func (l *Conn) Unacked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.inq)
}

// Done is closed when the connection ended.
func (l *Conn) Done() <-chan struct{} { return l.gone }

// MaxPacket is the broker's maximum packet size (0: none given).
func (l *Conn) MaxPacket() uint32 { return l.maxPacket }
