package bridge

// Request/response: a command that asks for an answer.
//
// MQTT: a command carrying an MQTT 5 Response Topic is a request. Its
// topic must match one of commands.response_topics, else the command is
// acknowledged, not delivered, counted (requests_total{result=
// "refused_topic"}) and logged, and nothing is published anywhere: a
// publisher cannot make edgeshim or a device write to an arbitrary topic.
// An allowed request reaches the device marked as one (json:
// "response_required": true; raw: X-Response-Required: true), with its
// Content Type and User Properties (bounded: maxUserProps, each key and
// value bounded; others are dropped).
//
// The device answers with POST {poll.path}/{id}/response (or a
// {"id","response","status"} frame on its WebSocket). edgeshim publishes
// the answer QoS 1 to the Response Topic with the Correlation Data, a
// "status" user property and the device's Content Type, and answers the
// device 204 only after the broker's PUBACK. With ack: explicit the
// answer is also the command's ack.
//
// No answer within commands.response_timeout (or the command's Message
// Expiry, if shorter): edgeshim answers 504 itself, and a command not yet
// delivered is dropped (acknowledged). The session ending (idle, evicted,
// shutdown) answers its open requests 503 "session_ended" and
// acknowledges their commands. Only if edgeshim dies is the asker left to
// the broker: it redelivers the unacknowledged command, a new request.
//
// WebSocket upstream: a backend command frame with "response_required":
// true is a request; the answer goes to the backend as
// {"response_to": id, "status": N, "payload": ..., "encoding": ...,
// "content_type": ...}.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/eclipse/paho.golang/packets"
	"github.com/prometheus/client_golang/prometheus"
)

// Bounds of what a request carries to the device.
const (
	maxUserProps     = 16  // user properties passed on per command
	maxUserPropKey   = 128 // bytes of one key
	maxUserPropValue = 512 // bytes of one value
	maxContentType   = 256 // bytes of a Content-Type
	maxTopicLog      = 128 // bytes of a refused topic in a log line
	answerWindow     = 2e9 // publishing the answers of an ending session
	statusProperty   = "status"
)

// request is an outstanding command that awaits the device's answer.
type request struct {
	id          string
	s           *session
	c           *command
	topic       string // MQTT Response Topic; "" for a WebSocket backend
	corr        []byte
	contentType string // of the command
	props       []packets.User
	arrived     time.Time
	deadline    time.Time
	timer       *time.Timer
	untracked   bool // refused (busy): never held, acknowledged once answered
}

// requestInfo is what a device needs to answer a command, in the json
// formats (poll and device WebSocket).
type requestInfo struct {
	ResponseRequired bool              `json:"response_required,omitempty"`
	ContentType      string            `json:"content_type,omitempty"`
	UserProperties   map[string]string `json:"user_properties,omitempty"`
}

func (c *command) requestInfo() requestInfo {
	r := c.req
	if r == nil {
		return requestInfo{}
	}
	info := requestInfo{ResponseRequired: true, ContentType: r.contentType}
	if len(r.props) > 0 {
		info.UserProperties = make(map[string]string, len(r.props))
		for _, p := range r.props {
			info.UserProperties[p.Key] = p.Value
		}
	}
	return info
}

// setRequestHeaders marks a raw poll answer as a request: X-Response-Required,
// the command's Content-Type, and one X-User-Property: key=value header per
// user property (both URL-query-escaped).
func setRequestHeaders(h http.Header, c *command) {
	r := c.req
	if r == nil {
		return
	}
	h.Set("X-Response-Required", "true")
	if r.contentType != "" {
		h.Set("Content-Type", r.contentType)
	}
	for _, p := range r.props {
		h.Add("X-User-Property", url.QueryEscape(p.Key)+"="+url.QueryEscape(p.Value))
	}
}

// boundProps keeps the first maxUserProps user properties whose key and
// value are within bounds, one per key (the first); it returns how many it
// dropped.
func boundProps(in []packets.User) ([]packets.User, int) {
	var out []packets.User
	dropped := 0
	for _, p := range in {
		if len(out) >= maxUserProps || p.Key == "" || len(p.Key) > maxUserPropKey || len(p.Value) > maxUserPropValue ||
			!utf8.ValidString(p.Key) || !utf8.ValidString(p.Value) ||
			slices.ContainsFunc(out, func(o packets.User) bool { return o.Key == p.Key }) {
			dropped++
			continue
		}
		out = append(out, p)
	}
	return out, dropped
}

// validContentType accepts a Content-Type to pass on: bounded and a
// well-formed media type.
func validContentType(ct string) bool {
	if ct == "" || len(ct) > maxContentType {
		return false
	}
	_, _, err := mime.ParseMediaType(ct)
	return err == nil
}

// topicMatch reports whether topic name matches the MQTT filter (+ one
// level, # the rest, including the parent level).
func topicMatch(filter, topic string) bool {
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !fmore:
			return false
		case !tmore:
			return frest == "#"
		}
		filter, topic = frest, trest
	}
}

// validTopicName: a topic one may publish to: no wildcards, no NUL,
// UTF-8, bounded.
func validTopicName(t string) bool {
	return t != "" && len(t) <= 65535 && utf8.ValidString(t) && !strings.ContainsAny(t, "+#\x00")
}

// requests holds a bridge's outstanding requests.
type requests struct {
	b          *Bridge
	filters    []string
	refusedLog eventLog // commands refused for their response topic

	mu        sync.Mutex
	byID      map[string]*request
	bySession map[*session]map[string]*request

	mReqs      *prometheus.CounterVec
	mResponses *prometheus.CounterVec
	mTimeouts  prometheus.Counter
	mLatency   prometheus.Histogram
}

// Labels of the request metrics.
const (
	reqAccepted     = "accepted"
	reqRefusedTopic = "refused_topic"
	reqBusy         = "busy"
	reqEnded        = "session_ended"
)

func newRequests(b *Bridge, reg prometheus.Registerer) *requests {
	q := &requests{b: b, filters: b.cfg.Commands.ResponseTopics,
		byID: map[string]*request{}, bySession: map[*session]map[string]*request{}}
	q.mReqs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_bridge_requests_total",
		Help: "Commands that ask for an answer (MQTT 5 Response Topic, or a backend's response_required), by result: accepted, refused_topic (Response Topic outside commands.response_topics: acknowledged, not delivered), busy (upstream.receive_maximum requests outstanding: answered 503), session_ended (answered 503 when the session ended)."}, []string{"result"})
	q.mResponses = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeshim_bridge_responses_total",
		Help: "Answers published to requesters, by who answered (device, edgeshim: timeout, busy, session end) and status class."}, []string{"by", "status"})
	q.mTimeouts = prometheus.NewCounter(prometheus.CounterOpts{Name: "edgeshim_bridge_request_timeouts_total",
		Help: "Requests the device did not answer within commands.response_timeout (or the Message Expiry): answered 504 by edgeshim."})
	q.mLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "edgeshim_bridge_response_seconds",
		Help:    "From a request's arrival at edgeshim to the device's answer being published.",
		Buckets: []float64{.005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300}})
	for _, r := range []string{reqAccepted, reqRefusedTopic, reqBusy, reqEnded} {
		q.mReqs.WithLabelValues(r)
	}
	for _, by := range []string{"device", "edgeshim"} {
		for _, c := range []string{"2xx", "3xx", "4xx", "5xx"} {
			q.mResponses.WithLabelValues(by, c)
		}
	}
	reg.MustRegister(q.mReqs, q.mResponses, q.mTimeouts, q.mLatency)
	return q
}

func statusClass(code int) string { return strconv.Itoa(code/100) + "xx" }

// enabled tells whether the response endpoint is served.
func (q *requests) enabled() bool {
	return len(q.filters) > 0 || q.b.cfg.Upstream.Driver == "websocket"
}

func (q *requests) allowed(t string) bool {
	if !validTopicName(t) {
		return false
	}
	for _, f := range q.filters {
		if topicMatch(f, t) {
			return true
		}
	}
	return false
}

// admitMQTT looks at a command's request properties: it returns false
// when the command is not to be delivered (refused: acknowledged here;
// or the session is ending: left to the broker).
func (q *requests) admitMQTT(s *session, l *mqttConn, p *packets.Publish, c *command) bool {
	pr := p.Properties
	if pr == nil || pr.ResponseTopic == "" || len(q.b.cfg.Commands.ResponseTopics) == 0 {
		return true // a plain command; with request/response off, nobody answers
	}
	if !q.allowed(pr.ResponseTopic) {
		q.mReqs.WithLabelValues(reqRefusedTopic).Inc()
		t := pr.ResponseTopic
		if len(t) > maxTopicLog {
			t = t[:maxTopicLog] + "..."
		}
		q.refusedLog.note(q.b.now(), func(n int, since time.Duration) { // a flood logs one line per period
			q.b.log.Warn("commands refused: response topic outside commands.response_topics; acknowledged, not delivered",
				"count", n, "in", since.Round(time.Second).String(), "last_device", s.device, "last_topic", p.Topic, "last_response_topic", t)
		})
		if p.QoS == 1 {
			if err := l.ackID(p.PacketID); err != nil {
				q.b.log.Debug("ack of a refused command not sent", "device", s.device, "err", err)
			}
		}
		return false
	}
	r := &request{topic: pr.ResponseTopic, corr: bytes.Clone(pr.CorrelationData)}
	if validContentType(pr.ContentType) {
		r.contentType = pr.ContentType
	}
	var dropped int
	if r.props, dropped = boundProps(pr.User); dropped > 0 {
		q.b.log.Debug("user properties over bounds not passed on", "device", s.device, "dropped", dropped)
	}
	timeout := q.b.cfg.Commands.ResponseTimeout.D()
	if pr.MessageExpiry != nil {
		timeout = min(timeout, time.Duration(*pr.MessageExpiry)*time.Second)
	}
	return q.track(s, c, r, timeout, p.Duplicate)
}

// admitBackend makes a backend's command with response_required a request.
func (q *requests) admitBackend(s *session, c *command) bool {
	if c.req == nil {
		return true
	}
	return q.track(s, c, c.req, q.b.cfg.Commands.ResponseTimeout.D(), false)
}

// track registers request r of command c (giving c its id), with its
// timeout timer. A redelivery (dup) of a request the session holds, same
// topic and correlation data, replaces it; a backend's resent id keeps
// the one held. Beyond upstream.receive_maximum outstanding requests the
// command is answered 503 and not delivered.
func (q *requests) track(s *session, c *command, r *request, timeout time.Duration, dup bool) bool {
	if c.id == "" {
		s.mu.Lock()
		s.seq++
		c.id = fmt.Sprintf("%s-%d", s.tag, s.seq)
		s.mu.Unlock()
	}
	now := q.b.now()
	r.id, r.s, r.c, r.arrived, r.deadline = c.id, s, c, now, now.Add(timeout)
	c.req = r
	q.mu.Lock()
	if s.ctx.Err() != nil { // ending: the broker redelivers it
		q.mu.Unlock()
		return false
	}
	held := q.bySession[s]
	if old := held[c.id]; old != nil {
		c.req = old // resent by a backend: the held one goes on
		q.mu.Unlock()
		return true
	}
	if dup && r.topic != "" {
		for _, o := range held {
			if o.topic == r.topic && bytes.Equal(o.corr, r.corr) {
				q.removeLocked(o)
				break
			}
		}
		held = q.bySession[s]
	}
	if len(held) >= q.b.cfg.Upstream.ReceiveMaximum {
		q.mu.Unlock()
		q.mReqs.WithLabelValues(reqBusy).Inc()
		q.b.log.Warn("request refused: upstream.receive_maximum requests outstanding; answered 503", "device", s.device)
		r.untracked = true
		q.async(func() {
			q.answer(r, "edgeshim", http.StatusServiceUnavailable, errorBody("busy", "the device has too many requests outstanding"))
		})
		return false
	}
	q.addLocked(r)
	q.mu.Unlock()
	q.mReqs.WithLabelValues(reqAccepted).Inc()
	return true
}

// async runs f on a goroutine in the bridge's wait group: never publish
// and wait on a link's reader goroutine.
func (q *requests) async(f func()) {
	q.b.wg.Add(1)
	go func() {
		defer q.b.wg.Done()
		f()
	}()
}

// addLocked registers r and arms its timer (a place in the bridge's wait
// group, released by the callback or by a successful Stop).
func (q *requests) addLocked(r *request) {
	q.byID[r.id] = r
	m := q.bySession[r.s]
	if m == nil {
		m = map[string]*request{}
		q.bySession[r.s] = m
	}
	m[r.id] = r
	q.b.wg.Add(1)
	r.timer = time.AfterFunc(max(r.deadline.Sub(q.b.now()), 0), func() {
		defer q.b.wg.Done()
		q.expire(r)
	})
}

// removeLocked unregisters r and stops its timer; true if r was held.
func (q *requests) removeLocked(r *request) bool {
	if !q.unlinkLocked(r) {
		return false
	}
	if r.timer.Stop() {
		q.b.wg.Done()
	}
	return true
}

// unlinkLocked unregisters r; true if r was held.
func (q *requests) unlinkLocked(r *request) bool {
	if q.byID[r.id] != r {
		return false
	}
	delete(q.byID, r.id)
	if m := q.bySession[r.s]; m != nil {
		delete(m, r.id)
		if len(m) == 0 {
			delete(q.bySession, r.s)
		}
	}
	return true
}

// expire answers a request the device did not answer in time.
func (q *requests) expire(r *request) {
	q.mu.Lock()
	held := q.unlinkLocked(r) // the timer has fired: nothing to stop
	q.mu.Unlock()
	if !held {
		return
	}
	q.mTimeouts.Inc()
	q.b.log.Info("request not answered in time; answered 504", "device", r.s.device, "id", r.id)
	q.answer(r, "edgeshim", http.StatusGatewayTimeout, errorBody("timeout", "the device did not answer in time"))
}

func errorBody(code, msg string) []byte {
	b, _ := json.Marshal(map[string]string{"error": code, "message": msg})
	return b
}

// answer publishes edgeshim's own answer to r on the session's link and,
// once the broker has it, drops r's command if still waiting for the
// device and acknowledges it: the request is over.
func (q *requests) answer(r *request, by string, status int, body []byte) {
	ctx, cancel := context.WithTimeout(r.s.ctx, q.b.cfg.Upstream.PublishTimeout.D())
	defer cancel()
	l := r.s.waitConnected(ctx)
	if l == nil {
		q.b.log.Warn("request answer not published: no upstream connection; an unacknowledged command is redelivered", "device", r.s.device, "id", r.id, "status", status)
		return
	}
	q.answerOn(ctx, l, r, by, status, body)
}

func (q *requests) answerOn(ctx context.Context, l link, r *request, by string, status int, body []byte) {
	if err := respondOn(ctx, l, r, status, "application/json", body); err != nil {
		q.b.log.Warn("request answer not published", "device", r.s.device, "id", r.id, "status", status, "err", err)
		return
	}
	q.mResponses.WithLabelValues(by, statusClass(status)).Inc()
	if r.s.forget(r.c) || r.untracked {
		if err := r.s.ackVia(r.c).ack(r.c); err != nil {
			q.b.log.Debug("ack not sent; the broker will redeliver", "device", r.s.device, "id", r.id, "err", err)
		}
	}
}

// forget removes c from the commands waiting for delivery or for their
// explicit ack; false if it is not held.
func (s *session) forget(c *command) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range []*[]*command{&s.pending, &s.inflight} {
		if i := slices.Index(*l, c); i >= 0 {
			*l = slices.Delete(*l, i, i+1)
			return true
		}
	}
	return false
}

// ended answers the open requests of a session that ends: 503
// session_ended on l (the link about to close), each command dropped and
// acknowledged. Without a link they are only dropped (the broker
// redelivers what was not acknowledged).
func (q *requests) ended(s *session, l link) {
	q.mu.Lock()
	var open []*request
	for _, r := range q.bySession[s] {
		open = append(open, r)
	}
	for _, r := range open {
		q.removeLocked(r)
	}
	q.mu.Unlock()
	if len(open) == 0 {
		return
	}
	q.mReqs.WithLabelValues(reqEnded).Add(float64(len(open)))
	if l == nil {
		q.b.log.Warn("session ended without an upstream connection; its open requests are not answered", "device", s.device, "requests", len(open))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(q.b.cfg.Upstream.PublishTimeout.D(), answerWindow))
	defer cancel()
	var wg sync.WaitGroup
	for _, r := range open {
		wg.Go(func() {
			q.answerOn(ctx, l, r, "edgeshim", http.StatusServiceUnavailable, errorBody("session_ended", "the device's session ended before it answered"))
		})
	}
	wg.Wait()
}

// respondError is a refused device answer: its HTTP status and reason.
type respondError struct {
	code   int
	reason string
}

func (e *respondError) Error() string { return e.reason }

var (
	errNoRequest    = &respondError{http.StatusNotFound, "no outstanding request with that id (unknown, already answered or expired)"}
	errOtherDevice  = &respondError{http.StatusForbidden, "the request belongs to another device"}
	errAnswerTooBig = &respondError{http.StatusRequestEntityTooLarge, "answer larger than the broker's maximum packet size"}
)

// respond publishes a device's answer to request id. It returns once the
// upstream has it; on failure the request stays open.
func (q *requests) respond(ctx context.Context, device, id string, status int, ctype string, body []byte) error {
	q.mu.Lock()
	r := q.byID[id]
	switch {
	case r == nil:
		q.mu.Unlock()
		return errNoRequest
	case r.s.device != device:
		q.mu.Unlock()
		return errOtherDevice
	}
	q.removeLocked(r) // claimed: the timer cannot answer it any more
	q.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, q.b.cfg.Upstream.PublishTimeout.D())
	defer cancel()
	err := errUnavailable
	if l := r.s.waitConnected(ctx); l != nil {
		err = respondOn(ctx, l, r, status, ctype, body)
	}
	if err != nil {
		q.mu.Lock()
		if r.s.ctx.Err() == nil && q.byID[id] == nil {
			q.addLocked(r) // the device may answer again; the deadline holds
		}
		q.mu.Unlock()
		if errors.Is(err, errTooLarge) {
			return errAnswerTooBig
		}
		return &respondError{http.StatusServiceUnavailable, "upstream did not take the answer: " + err.Error()}
	}
	q.mResponses.WithLabelValues("device", statusClass(status)).Inc()
	q.mLatency.Observe(q.b.now().Sub(r.arrived).Seconds())
	r.s.ack(id) // ack: explicit: the answer acknowledges the command
	return nil
}

// responder is a link that can carry an answer to a request.
type responder interface {
	respond(ctx context.Context, r *request, status int, ctype string, body []byte) error
}

var (
	_ responder = (*mqttConn)(nil)
	_ responder = (*wsLink)(nil)
)

func respondOn(ctx context.Context, l link, r *request, status int, ctype string, body []byte) error {
	rl, ok := l.(responder)
	if !ok {
		return fmt.Errorf("%w: link cannot answer", errUnavailable)
	}
	return rl.respond(ctx, r, status, ctype, body)
}

// respond publishes the answer to the Response Topic, QoS 1, with the
// Correlation Data and the status as user property "status".
func (l *mqttConn) respond(ctx context.Context, r *request, status int, ctype string, body []byte) error {
	if r.topic == "" {
		return fmt.Errorf("%w: request without a response topic", errUnavailable)
	}
	props := &packets.Properties{CorrelationData: r.corr, ContentType: ctype,
		User: []packets.User{{Key: statusProperty, Value: strconv.Itoa(status)}}}
	return l.pub(ctx, &packets.Publish{Topic: r.topic, QoS: 1, Payload: body, Properties: props})
}

// respond sends {"response_to": id, "status": N, "payload": ...} to the
// backend.
func (l *wsLink) respond(ctx context.Context, r *request, status int, ctype string, body []byte) error {
	f := wsFrame{ResponseTo: r.id, Status: status}
	f.ContentType = ctype
	f.Payload, f.Encoding = encodePayload(body)
	return l.write(ctx, f)
}

// backendRequest marks a backend command frame asking for an answer.
func backendRequest(want bool) *request {
	if !want {
		return nil
	}
	return &request{}
}

// matchResponse matches "{poll path}/{id}/response".
func (t pathTemplate) matchResponse(path string) (device, id string, ok bool) {
	rest, found := strings.CutSuffix(path, "/response")
	if !found {
		return "", "", false
	}
	return t.matchAck(rest + "/ack")
}

// answerStatus reads a device answer's status: X-Status or ?status=,
// 200-599; default 200.
func answerStatus(r *http.Request) (int, error) {
	v := r.Header.Get("X-Status")
	if v == "" {
		v = r.URL.Query().Get("status")
	}
	if v == "" {
		return http.StatusOK, nil
	}
	return parseStatus(v)
}

func parseStatus(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 200 || n > 599 || len(v) != 3 {
		return 0, fmt.Errorf("status must be 200-599 (got %q)", v)
	}
	return n, nil
}

// serveResponse takes a device's answer to a request.
func (b *Bridge) serveResponse(w http.ResponseWriter, r *http.Request, pathDev, id string) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		b.fail(w, r, http.StatusMethodNotAllowed, "response takes POST")
		return
	}
	dev, ok := b.device(w, r, pathDev)
	if !ok {
		return
	}
	status, err := answerStatus(r)
	if err != nil {
		b.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	ctype := r.Header.Get("Content-Type")
	if ctype != "" && !validContentType(ctype) {
		b.fail(w, r, http.StatusBadRequest, "Content-Type is not a media type of at most 256 bytes")
		return
	}
	maxBody := b.liveMax.Load()
	if r.ContentLength > maxBody {
		b.fail(w, r, http.StatusRequestEntityTooLarge, "response body too large")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		b.fail(w, r, http.StatusRequestEntityTooLarge, "reading response body: "+err.Error())
		return
	}
	if err := b.rr.respond(r.Context(), dev, id, status, ctype, body); err != nil {
		var re *respondError
		if errors.As(err, &re) {
			b.fail(w, r, re.code, re.reason)
		} else {
			b.fail(w, r, http.StatusServiceUnavailable, err.Error())
		}
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// wsResponse takes a device's answer frame {"id","response","status"
// [,"encoding","content_type"]} on its WebSocket. A refused answer is
// logged; the socket goes on.
func (b *Bridge) wsResponse(s *session, f wsFrame) (int, string) {
	status := http.StatusOK
	if f.Status != 0 {
		status = f.Status
		if status < 200 || status > 599 {
			b.log.Info("websocket answer refused: status must be 200-599", "device", s.device, "id", f.ID)
			return 0, ""
		}
	}
	body := []byte(*f.Response)
	if f.Encoding == "base64" {
		var err error
		if body, err = base64.StdEncoding.DecodeString(*f.Response); err != nil {
			return 1008, "bad_frame"
		}
	}
	ctype := f.ContentType
	if ctype != "" && !validContentType(ctype) {
		ctype = ""
	}
	if err := b.rr.respond(s.ctx, s.device, f.ID, status, ctype, body); err != nil {
		b.log.Info("websocket answer refused", "device", s.device, "id", f.ID, "err", err)
	}
	return 0, ""
}
