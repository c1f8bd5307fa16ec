package bridge

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/log"
)

// timerPinger is a paho.Pinger that keeps the MQTT keepalive with a
// runtime timer instead of a goroutine per session: idle sessions are the
// common case, and each goroutine costs its stack. It sends PINGREQ when
// nothing was sent or received for a keepalive interval, and closes the
// connection (paho then reports it lost) when a PINGREQ got no PINGRESP
// within the next interval.
type timerPinger struct {
	mu           sync.Mutex
	lastSent     time.Time
	lastReceived time.Time
	lastPingSent time.Time
	lastPingResp time.Time
	timer        *time.Timer
}

var _ paho.Pinger = (*timerPinger)(nil)

// Run arms the timer and returns at once; paho's worker goroutine for
// the pinger ends with it. The timer stops when ctx ends.
func (p *timerPinger) Run(ctx context.Context, conn net.Conn, keepAlive uint16) error {
	if keepAlive == 0 {
		return nil
	}
	interval := time.Duration(keepAlive) * time.Second
	p.mu.Lock()
	now := time.Now()
	p.lastSent, p.lastReceived = now, now
	p.timer = time.AfterFunc(interval, func() { p.tick(ctx, conn, interval) })
	p.mu.Unlock()
	context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.timer.Stop()
		p.mu.Unlock()
	})
	return nil
}

func (p *timerPinger) tick(ctx context.Context, conn net.Conn, interval time.Duration) {
	p.mu.Lock()
	if ctx.Err() != nil {
		p.mu.Unlock()
		return
	}
	if !p.lastPingSent.IsZero() && p.lastPingSent.After(p.lastPingResp) {
		p.mu.Unlock()
		conn.Close() // PINGRESP timed out: the broker is gone
		return
	}
	due := p.lastSent
	if p.lastReceived.Before(due) {
		due = p.lastReceived
	}
	due = due.Add(interval)
	now := time.Now()
	if now.Before(due) {
		p.timer.Reset(due.Sub(now))
		p.mu.Unlock()
		return
	}
	p.lastPingSent = now
	p.timer.Reset(interval)
	p.mu.Unlock()
	if _, err := packets.NewControlPacket(packets.PINGREQ).WriteTo(conn); err != nil {
		conn.Close()
		return
	}
	p.PacketSent()
}

func (p *timerPinger) PacketSent() {
	p.mu.Lock()
	p.lastSent = time.Now()
	p.mu.Unlock()
}

func (p *timerPinger) PacketReceived() {
	p.mu.Lock()
	p.lastReceived = time.Now()
	p.mu.Unlock()
}

func (p *timerPinger) PingResp() {
	p.mu.Lock()
	p.lastPingResp = time.Now()
	p.mu.Unlock()
}

func (p *timerPinger) SetDebug(log.Logger) {}
