package bridge

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	sessionsOpen prometheus.Gauge
	connects     *prometheus.CounterVec
	disconnects  *prometheus.CounterVec
	delivered    prometheus.Counter
	redelivered  prometheus.Counter
	latency      prometheus.Histogram
	telemetry    *prometheus.CounterVec
	held         prometheus.Gauge
	sockets      prometheus.Gauge
	wsCloses     *prometheus.CounterVec
	upSockets    prometheus.Gauge
	upCloses     *prometheus.CounterVec
	wsMessages   *prometheus.CounterVec
	expired      prometheus.Counter
	unrenderable prometheus.Counter
	notReceived  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sessionsOpen: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgeshim_bridge_sessions_open", Help: "Device sessions in the registry."}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_bridge_session_connects_total",
			Help: "Upstream session connect attempts, by result."}, []string{"result"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_bridge_session_disconnects_total",
			Help: "Upstream session ends, by reason (idle, evicted, shutdown, connection_lost, taken_over). evicted counts sessions evicted with or without a link."}, []string{"reason"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgeshim_bridge_commands_delivered_total",
			Help: "Commands delivered to devices and acknowledged upstream."}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgeshim_bridge_commands_redelivered_total",
			Help: "Commands offered again (broker redelivery, or explicit-ack timeout)."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "edgeshim_bridge_command_delivery_seconds",
			Help:    "From a command's arrival at edgeshim to its delivery to the device.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 30, 60, 300, 3600}}),
		telemetry: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_bridge_telemetry_total",
			Help: "Telemetry messages, by result (published, failed, unavailable)."}, []string{"result"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgeshim_bridge_polls_held", Help: "Long-polls currently held."}),
	}
	m.sockets = prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgeshim_bridge_websockets_open", Help: "Device WebSockets open."})
	m.wsCloses = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_bridge_websocket_closes_total",
		Help: "Device WebSockets closed, by close code and reason (slow_reader, pong_timeout, too_big, bad_frame, peer_closed, peer_gone, upstream_lost, evicted, shutdown). 1006: the peer was gone, no close frame sent."}, []string{"code", "reason"})
	m.upSockets = prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgeshim_bridge_upstream_websockets_open",
		Help: "WebSocket sessions open to the backend (upstream.driver websocket)."})
	m.upCloses = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_bridge_upstream_websocket_closes_total",
		Help: "Backend WebSocket sessions ended, by close code (received or sent)."}, []string{"code"})
	m.wsMessages = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_bridge_websocket_messages_total",
		Help: "WebSocket messages, by socket (device, upstream) and direction (in: read by edgeshim, out: written)."}, []string{"socket", "direction"})
	m.expired = prometheus.NewCounter(prometheus.CounterOpts{Name: "edgeshim_bridge_commands_expired_total",
		Help: "Commands whose expiry (MQTT 5 message expiry, commands.max_age) passed before delivery: acknowledged upstream, never delivered."})
	m.unrenderable = prometheus.NewCounter(prometheus.CounterOpts{Name: "edgeshim_bridge_commands_unrenderable_total",
		Help: "Commands poll.template could not render even alone (too large, or a template error): acknowledged upstream, never delivered."})
	m.notReceived = prometheus.NewCounter(prometheus.CounterOpts{Name: "edgeshim_bridge_commands_unconfirmed_total",
		Help: "Command answers the device's TCP stack did not acknowledge within poll.ack_write_timeout (ack: write): connection closed, command kept for a later poll."})
	reg.MustRegister(m.expired, m.unrenderable, m.notReceived)
	reg.MustRegister(m.sockets, m.wsCloses, m.upSockets, m.upCloses, m.wsMessages)
	reg.MustRegister(m.sessionsOpen, m.connects, m.disconnects, m.delivered, m.redelivered, m.latency, m.telemetry, m.held)
	m.initLabels()
	return m
}

// Known label values of the counters, created at 0 so that rate() and
// alerts see them before the first event.
var (
	connectResults    = []string{"ok", "error"}
	disconnectReasons = []string{reasonIdle, reasonEvicted, reasonShutdown, reasonLost, reasonAdmin, reasonWebSocketClosed}
	telemetryResults  = []string{"published", "failed", "unavailable"}
)

// reasonWebSocketClosed: the device WebSocket holding the session closed.
const reasonWebSocketClosed = "websocket_closed"

func (m *metrics) initLabels() {
	for _, r := range connectResults {
		m.connects.WithLabelValues(r)
	}
	for _, r := range disconnectReasons {
		m.disconnects.WithLabelValues(r)
	}
	for _, r := range telemetryResults {
		m.telemetry.WithLabelValues(r)
	}
}
