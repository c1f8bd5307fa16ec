package bridge

import (
	"slices"
	"strings"
	"time"
)

// Device session states, as DeviceInfo.State and Devices' filter show them.
const (
	// StateConnected: the session's MQTT (or WebSocket) link to the
	// upstream is up.
	StateConnected = "connected"
	// StateConnecting: the session waits for its (re)connect.
	StateConnecting = "connecting"
)

// reasonAdmin ends a session through the admin API.
const reasonAdmin = "admin"

// DeviceInfo is what the admin API shows of one device session.
type DeviceInfo struct {
	Device string `json:"device"`
	// State is StateConnected or StateConnecting.
	State string `json:"state"`
	// LastPoll is the device's last poll (or the session's start).
	LastPoll time.Time `json:"last_poll"`
	// Pending are commands received from upstream, not yet written to the
	// device; Unacked were written and wait for the device's explicit ack.
	Pending int `json:"pending"`
	Unacked int `json:"unacked"`
	// WebSockets are the device WebSockets holding the session open.
	WebSockets int `json:"websockets"`
}

// snapshot is a session with its last poll, taken under b.mu.
type snapshot struct {
	s        *session
	lastPoll time.Time
}

// snapshots returns the live sessions (all, or the one of device) without
// touching their recency.
func (b *Bridge) snapshots(device string) []snapshot {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []snapshot
	keys := b.sessions.Keys()
	if device != "" {
		keys = []string{device}
	}
	for _, k := range keys {
		if s, ok := b.sessions.Peek(k); ok {
			out = append(out, snapshot{s, s.lastPoll})
		}
	}
	return out
}

// info reads one session's state under its own lock (never under b.mu).
func (sn snapshot) info() (DeviceInfo, bool) {
	s := sn.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return DeviceInfo{}, false
	}
	d := DeviceInfo{Device: s.device, State: StateConnecting, LastPoll: sn.lastPoll,
		Pending: len(s.pending), Unacked: len(s.inflight), WebSockets: int(s.attached.Load())}
	if s.link != nil {
		d.State = StateConnected
	}
	return d, true
}

// Device returns the session of device, if it has one.
func (b *Bridge) Device(device string) (DeviceInfo, bool) {
	if device == "" {
		return DeviceInfo{}, false
	}
	for _, sn := range b.snapshots(device) {
		return sn.info()
	}
	return DeviceInfo{}, false
}

// Devices returns up to limit sessions in the given state ("" for any),
// ordered by device id, and whether more matched.
func (b *Bridge) Devices(state string, limit int) ([]DeviceInfo, bool) {
	var out []DeviceInfo
	for _, sn := range b.snapshots("") {
		if d, ok := sn.info(); ok && (state == "" || d.State == state) {
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(a, b DeviceInfo) int { return strings.Compare(a.Device, b.Device) })
	if len(out) > limit {
		return out[:limit], true
	}
	return out, false
}

// EndSession ends device's session as an idle timeout would: it
// disconnects with its will (presence turns offline), its unacknowledged
// commands stay with the broker, and the device's next poll starts a new
// session. It reports whether there was one.
func (b *Bridge) EndSession(device string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.sessions.Peek(device)
	if !ok {
		return false
	}
	s.end(reasonAdmin) // before Remove, so the evict callback is a no-op
	b.sessions.Remove(device)
	return true
}

// Connected counts the sessions whose upstream link is up (the gauge
// beside edgeshim_bridge_sessions_open, the sessions wanted).
func (b *Bridge) Connected() int {
	n := 0
	for _, sn := range b.snapshots("") {
		if d, ok := sn.info(); ok && d.State == StateConnected {
			n++
		}
	}
	return n
}
