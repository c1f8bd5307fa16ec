package sim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// Publisher sends one QoS 1 command and returns once the broker
// acknowledged it. It hides the MQTT client so the simulator can move to
// edgeshim's own client later.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte, expiry time.Duration) error
	Close() error
}

// ErrNotAccepted is returned when the broker's PUBACK carries a reason code
// saying it did not take the message (>= 0x80, or 0x10 no subscribers).
var ErrNotAccepted = errors.New("publish not accepted by the broker")

// pahoPublisher publishes with paho.golang, redialling after a failure.
type pahoPublisher struct {
	addr, id string
	mu       sync.Mutex
	cl       *paho.Client
	dead     chan struct{}
}

var _ Publisher = (*pahoPublisher)(nil)

// NewPahoPublisher returns a Publisher to mqtt://host:port; it connects on
// first use and again after a connection failure.
func NewPahoPublisher(broker, clientID string) (Publisher, error) {
	u, err := url.Parse(broker)
	if err != nil || u.Scheme != "mqtt" || u.Host == "" {
		return nil, fmt.Errorf("broker %q: want mqtt://host:port", broker)
	}
	return &pahoPublisher{addr: u.Host, id: clientID}, nil
}

func (p *pahoPublisher) client(ctx context.Context) (*paho.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cl != nil {
		select {
		case <-p.dead:
			p.cl = nil
		default:
			return p.cl, nil
		}
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, fmt.Errorf("dial broker: %w", err)
	}
	dead := make(chan struct{})
	var once sync.Once
	gone := func() { once.Do(func() { close(dead) }) }
	cl := paho.NewClient(paho.ClientConfig{ClientID: p.id, Conn: conn,
		OnClientError:      func(error) { gone() },
		OnServerDisconnect: func(*paho.Disconnect) { gone() }})
	if _, err := cl.Connect(ctx, &paho.Connect{ClientID: p.id, KeepAlive: 30, CleanStart: true}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect broker: %w", err)
	}
	p.cl, p.dead = cl, dead
	return cl, nil
}

func (p *pahoPublisher) Publish(ctx context.Context, topic string, payload []byte, expiry time.Duration) error {
	cl, err := p.client(ctx)
	if err != nil {
		return err
	}
	pub := &paho.Publish{Topic: topic, QoS: 1, Payload: payload}
	if expiry > 0 {
		e := uint32(max(expiry/time.Second, 1))
		pub.Properties = &paho.PublishProperties{MessageExpiry: &e}
	}
	resp, err := cl.Publish(ctx, pub)
	if err != nil {
		p.mu.Lock()
		stale := p.cl == cl
		if stale {
			p.cl = nil
		}
		p.mu.Unlock()
		if stale {
			_ = cl.Disconnect(&paho.Disconnect{})
		}
		return fmt.Errorf("publish: %w", err)
	}
	if resp != nil && (resp.ReasonCode >= 0x80 || resp.ReasonCode == 0x10) {
		return fmt.Errorf("%w: reason 0x%02x", ErrNotAccepted, resp.ReasonCode)
	}
	return nil
}

func (p *pahoPublisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cl == nil {
		return nil
	}
	err := p.cl.Disconnect(&paho.Disconnect{})
	p.cl = nil
	return err
}
