package wsnet

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/limits/park"
	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newParker makes the test server's parker (TestServeFallback swaps it).
var newParker = park.New

// served is one server-side socket of the test server.
type served struct {
	s     *Socket
	got   chan string
	done  chan struct{}
	dones atomic.Int32
}

type testServer struct {
	url   string
	p     *park.Parker
	socks chan *served
}

// newTestServer serves parked WebSockets over TLS (httptest: the hijacked
// connection is a tls.Conn over a TCP socket, as in edgeshim).
func newTestServer(t *testing.T, o KeepOptions) *testServer {
	t.Helper()
	ts := &testServer{p: newParker(), socks: make(chan *served, 100)}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, err := Upgrade(&websocket.Upgrader{}, w, r, nil)
		if err != nil {
			t.Error(err)
			return
		}
		x := &served{got: make(chan string, 100), done: make(chan struct{})}
		x.s, err = Serve(ts.p, u, o, func(mt int, r io.Reader) (int, string) {
			data, err := io.ReadAll(r)
			if err != nil {
				return ReadCloseCode(err)
			}
			x.got <- string(data)
			return 0, ""
		}, nil, func() {
			if x.dones.Add(1) == 1 {
				close(x.done)
			} else {
				t.Error("done ran twice")
			}
		})
		if err != nil {
			t.Error(err)
			return
		}
		ts.socks <- x
		x.s.Start()
	}))
	ts.url = "wss" + strings.TrimPrefix(srv.URL, "https")
	t.Cleanup(func() {
		srv.Close()
		ts.p.Close()
	})
	return ts
}

func (ts *testServer) dial(t *testing.T) (*websocket.Conn, *served) {
	t.Helper()
	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	c, _, err := d.Dial(ts.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	select {
	case x := <-ts.socks:
		return c, x
	case <-time.After(5 * time.Second):
		t.Fatal("no socket served")
		return nil, nil
	}
}

// frame is a client frame (masked with a zero key: the payload as is).
func frame(op byte, payload []byte) []byte {
	b := []byte{0x80 | op}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, 0, 0, 0, 0)
	return append(b, payload...)
}

func expect(t *testing.T, x *served, want string) {
	t.Helper()
	select {
	case got := <-x.got:
		if got != want {
			t.Fatalf("got %.20q (%d bytes), want %.20q (%d bytes)", got, len(got), want, len(want))
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("message %.20q not read: left in a buffer above the socket?", want)
	}
}

var keepLong = KeepOptions{Ping: time.Minute, PongTimeout: time.Minute, MaxMessage: 1 << 20}

// TestServeDrainsBuffers: frames that arrive together — in one TLS record,
// in TLS records read ahead by crypto/tls, in gorilla's reader — are all
// read before the reader parks; nothing waits for more data to come. A
// ping among them is answered.
func TestServeDrainsBuffers(t *testing.T) {
	ts := newTestServer(t, keepLong)
	c, x := ts.dial(t)
	pongs := make(chan string, 1)
	c.SetPongHandler(func(s string) error { pongs <- s; return nil })
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	big := strings.Repeat("x", 17000) // two TLS records
	var raw []byte
	raw = append(raw, frame(websocket.BinaryMessage, []byte(big))...)
	raw = append(raw, frame(websocket.BinaryMessage, []byte("b"))...)
	raw = append(raw, frame(websocket.PingMessage, []byte("hello"))...)
	raw = append(raw, frame(websocket.PongMessage, nil)...)
	raw = append(raw, frame(websocket.TextMessage, []byte("c"))...)
	if _, err := c.NetConn().Write(raw); err != nil {
		t.Fatal(err)
	}
	expect(t, x, big)
	expect(t, x, "b")
	expect(t, x, "c")
	select {
	case p := <-pongs:
		if p != "hello" {
			t.Errorf("pong %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Error("ping not answered")
	}
	// A large message and a small one in one write, of sizes for which
	// the small one is left decrypted in crypto/tls (gorilla reads large
	// payloads past its buffer) or in gorilla's buffer.
	for _, n := range []int{600, 1000, 2000, 4000, 5000, 9000, 16000, 20000, 40000} {
		big := strings.Repeat("y", n)
		raw = append(frame(websocket.BinaryMessage, []byte(big)), frame(websocket.BinaryMessage, []byte("small"))...)
		if _, err := c.NetConn().Write(raw); err != nil {
			t.Fatal(err)
		}
		expect(t, x, big)
		expect(t, x, "small")
	}
	// Small frames, several per record.
	raw = raw[:0]
	for _, s := range []string{"1", "2", "3"} {
		raw = append(raw, frame(websocket.TextMessage, []byte(s))...)
	}
	c.NetConn().Write(raw)
	for _, s := range []string{"1", "2", "3"} {
		expect(t, x, s)
	}
	// And through gorilla's writer, one at a time.
	c.WriteMessage(websocket.TextMessage, []byte("d"))
	expect(t, x, "d")
}

// TestServeIdleHasNoGoroutine: idle sockets hold no goroutine, counted
// from before they were dialled (the client's sockets have none: nobody
// reads them); each still reads what its client sends, and parks again.
// With park.NewFallback each would hold one.
func TestServeIdleHasNoGoroutine(t *testing.T) {
	const n = 50
	ts := newTestServer(t, keepLong)
	settled := func(want int) int {
		g := runtime.NumGoroutine()
		for deadline := time.Now().Add(10 * time.Second); g > want && time.Now().Before(deadline); g = runtime.NumGoroutine() {
			time.Sleep(10 * time.Millisecond) // a goroutine's end has no signal
		}
		return g
	}
	before := runtime.NumGoroutine()
	var cs []*websocket.Conn
	var xs []*served
	for range n {
		c, x := ts.dial(t)
		cs, xs = append(cs, c), append(xs, x)
	}
	if g := settled(before); g > before {
		t.Errorf("%d idle sockets hold %d goroutines", n, g-before)
	}
	for i, c := range cs {
		c.WriteMessage(websocket.TextMessage, []byte("hi"))
		expect(t, xs[i], "hi")
	}
	if g := settled(before); g > before {
		t.Errorf("%d idle sockets hold %d goroutines after a message each", n, g-before)
	}
}

// TestServePongTimeout: a peer that does not answer pings is closed
// (1008) within ping + pong timeout, by the timer: no read is waiting.
func TestServePongTimeout(t *testing.T) {
	ts := newTestServer(t, KeepOptions{Ping: 200 * time.Millisecond, PongTimeout: 200 * time.Millisecond, MaxMessage: 1024})
	c, x := ts.dial(t)
	c.SetPingHandler(func(string) error { return nil })
	start := time.Now()
	code := make(chan int, 1)
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					code <- ce.Code
				} else {
					code <- 0
				}
				return
			}
		}
	}()
	select {
	case <-x.done:
	case <-time.After(5 * time.Second):
		t.Fatal("dead peer not closed")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("closed after %s", took)
	}
	if got, reason := x.s.Why(); got != websocket.ClosePolicyViolation || reason != "pong_timeout" {
		t.Errorf("closed %d %s", got, reason)
	}
	if c := <-code; c != websocket.ClosePolicyViolation {
		t.Errorf("client saw close %d", c)
	}
}

// TestServeLivePeerStays: a peer that answers pings stays, across many
// ping periods, while its socket is parked.
func TestServeLivePeerStays(t *testing.T) {
	ts := newTestServer(t, KeepOptions{Ping: 100 * time.Millisecond, PongTimeout: 100 * time.Millisecond, MaxMessage: 1024})
	c, x := ts.dial(t)
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}()
	select {
	case <-x.done:
		code, reason := x.s.Why()
		t.Fatalf("live peer closed: %d %s", code, reason)
	case <-time.After(time.Second):
	}
	c.WriteMessage(websocket.TextMessage, []byte("still here"))
	expect(t, x, "still here")
}

// TestServeCloseParked: closing a parked socket finishes it once, from
// the closer; the client sees the close code.
func TestServeCloseParked(t *testing.T) {
	ts := newTestServer(t, keepLong)
	c, x := ts.dial(t)
	time.Sleep(50 * time.Millisecond)
	x.s.Close(websocket.CloseGoingAway, "shutdown")
	select {
	case <-x.done:
	case <-time.After(5 * time.Second):
		t.Fatal("done not run")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("client: %v", err)
	}
	if ts.p.Len() != 0 {
		t.Errorf("%d handles left in the parker", ts.p.Len())
	}
}

// TestServeTooBig: a message over the limit closes 1009; a peer's close
// ends the socket.
func TestServeTooBig(t *testing.T) {
	ts := newTestServer(t, KeepOptions{Ping: time.Minute, PongTimeout: time.Minute, MaxMessage: 100})
	c, x := ts.dial(t)
	c.WriteMessage(websocket.BinaryMessage, make([]byte, 200))
	<-x.done
	if code, _ := x.s.Why(); code != websocket.CloseMessageTooBig {
		t.Errorf("closed %d, want 1009", code)
	}
	c2, x2 := ts.dial(t)
	c2.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	<-x2.done
	if code, reason := x2.s.Why(); code != websocket.CloseNormalClosure || reason != "peer_closed" {
		t.Errorf("closed %d %s, want 1000 peer_closed", code, reason)
	}
}

// TestParkerCloseEndsSockets: closing the parker with parked sockets ends
// them (their done runs).
func TestParkerCloseEndsSockets(t *testing.T) {
	ts := newTestServer(t, keepLong)
	_, x := ts.dial(t)
	time.Sleep(50 * time.Millisecond)
	ts.p.Close()
	select {
	case <-x.done:
	default:
		t.Fatal("parked socket not ended by the parker's Close")
	}
}

// TestServeFallback: the same behaviour where sockets cannot be polled
// (other systems): each reader waits in a goroutine of its own.
func TestServeFallback(t *testing.T) {
	newParker = park.NewFallback
	defer func() { newParker = park.New }()
	for name, test := range map[string]func(*testing.T){
		"DrainsBuffers": TestServeDrainsBuffers, "PongTimeout": TestServePongTimeout, "LivePeerStays": TestServeLivePeerStays,
		"CloseParked": TestServeCloseParked, "TooBig": TestServeTooBig, "ParkerCloseEndsSockets": TestParkerCloseEndsSockets,
	} {
		t.Run(name, test)
	}
}
