package integration

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// mqttPeer is a backend application on the broker: it publishes commands
// and watches presence and telemetry.
type mqttPeer struct {
	t   testing.TB
	cl  *paho.Client
	mu  sync.Mutex
	chs map[string]chan *paho.Publish // by subscription filter
}

// newMQTTPeer connects to addr. cleanStart false with a fixed id keeps a
// persistent session (for tests that reconnect after a broker restart).
func newMQTTPeer(t testing.TB, addr, id string, cleanStart bool) *mqttPeer {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p := &mqttPeer{t: t, chs: map[string]chan *paho.Publish{}}
	p.cl = paho.NewClient(paho.ClientConfig{ClientID: id, Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			p.mu.Lock()
			defer p.mu.Unlock()
			for filter, ch := range p.chs {
				if topicMatches(filter, pr.Packet.Topic) {
					select {
					case ch <- pr.Packet:
					default:
						t.Errorf("peer channel for %s full", filter)
					}
				}
			}
			return true, nil
		}}})
	expiry := uint32(3600)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.cl.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: cleanStart,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}}); err != nil {
		t.Fatalf("peer connect: %v", err)
	}
	t.Cleanup(func() { p.cl.Disconnect(&paho.Disconnect{}) })
	return p
}

// subscribe returns a channel of the messages on filter (buffered).
func (p *mqttPeer) subscribe(filter string) <-chan *paho.Publish {
	p.t.Helper()
	ch := make(chan *paho.Publish, 65536)
	p.mu.Lock()
	p.chs[filter] = ch
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.cl.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}}); err != nil {
		p.t.Fatalf("subscribe %s: %v", filter, err)
	}
	return ch
}

func (p *mqttPeer) publish(topic, payload string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.cl.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)}); err != nil {
		p.t.Fatalf("publish %s: %v", topic, err)
	}
}

// await returns the next message on ch whose payload is want, failing after
// within. Other payloads are skipped.
func await(t testing.TB, ch <-chan *paho.Publish, want string, within time.Duration) *paho.Publish {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case m := <-ch:
			if string(m.Payload) == want {
				return m
			}
		case <-timer.C:
			t.Fatalf("no %q within %s", want, within)
			return nil
		}
	}
}

// topicMatches implements MQTT filter matching for + and #.
func topicMatches(filter, topic string) bool {
	f, tp := splitTopic(filter), splitTopic(topic)
	for i, part := range f {
		if part == "#" {
			return true
		}
		if i >= len(tp) || (part != "+" && part != tp[i]) {
			return false
		}
	}
	return len(f) == len(tp)
}

func splitTopic(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
