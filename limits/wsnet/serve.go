package wsnet

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/edgeshim/edgeshim/limits/park"
	"github.com/gorilla/websocket"
)

// readBufferSize is each socket's own read buffer: frames larger than it
// are read past it. It holds a control frame whole (2+4+125 bytes).
const readBufferSize = 512

// Upgraded is a server-side WebSocket just upgraded by Upgrade, with the
// layers beneath gorilla that Serve needs to see: the bufio.Reader gorilla
// reads from and the connection under it.
type Upgraded struct {
	*websocket.Conn
	br *bufio.Reader
	pc *probeConn
}

// Upgrade upgrades the request as u.Upgrade does, handing gorilla a
// bufio.Reader (512 B) and a connection wrapper of edgeshim's own, so that
// Serve can tell whether data is buffered above the socket. u's
// ReadBufferSize is ignored.
func Upgrade(u *websocket.Upgrader, w http.ResponseWriter, r *http.Request, hdr http.Header) (*Upgraded, error) {
	up := *u
	// Gorilla reads from the hijacked bufio.Reader when ReadBufferSize is 0
	// and the reader is larger than 256 bytes (server.go, Upgrade).
	up.ReadBufferSize = 0
	hw := &hijackWriter{ResponseWriter: w}
	c, err := up.Upgrade(hw, r, hdr)
	if err != nil {
		return nil, err
	}
	if hw.pc == nil || c.NetConn() != net.Conn(hw.pc) {
		c.Close()
		return nil, errors.New("wsnet: upgrade did not use the hijacked reader")
	}
	return &Upgraded{Conn: c, br: hw.br, pc: hw.pc}, nil
}

// hijackWriter puts edgeshim's reader and connection wrapper between
// gorilla and the hijacked connection.
type hijackWriter struct {
	http.ResponseWriter
	br *bufio.Reader
	pc *probeConn
}

func (h *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, http.ErrNotSupported
	}
	c, brw, err := hj.Hijack()
	if err != nil || brw.Reader.Buffered() > 0 {
		// A client that sent data before the handshake completed:
		// gorilla refuses it.
		return c, brw, err
	}
	h.pc = &probeConn{Conn: c}
	h.br = bufio.NewReaderSize(h.pc, readBufferSize)
	return h.pc, bufio.NewReadWriter(h.br, brw.Writer), nil
}

// probeConn is the connection beneath gorilla's reader. It can tell,
// without blocking, whether the connection beneath it (TLS) has data
// already read from the socket: a byte taken to find out is given back to
// the next Read.
type probeConn struct {
	net.Conn
	peek   [1]byte
	peeked bool
}

// NetConn returns the wrapped connection (the socket is found beneath it).
func (c *probeConn) NetConn() net.Conn { return c.Conn }

func (c *probeConn) Read(p []byte) (int, error) {
	if c.peeked && len(p) > 0 {
		p[0] = c.peek[0]
		c.peeked = false
		return 1, nil
	}
	return c.Conn.Read(p)
}

// aLongTimeAgo is a read deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// probe reports whether a Read would return without waiting for the
// socket. crypto/tls returns decrypted or fully buffered records without
// reading the socket; when it would read, the past deadline fails the read
// at once with a timeout, which crypto/tls treats as temporary (the
// connection goes on, a partial record stays buffered). Any other error
// is reported as data: the next Read returns it.
func (c *probeConn) probe() bool {
	if c.peeked {
		return true
	}
	c.Conn.SetReadDeadline(aLongTimeAgo)
	n, err := c.Conn.Read(c.peek[:])
	c.Conn.SetReadDeadline(time.Time{})
	if n > 0 {
		c.peeked = true
		return true
	}
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// Handler reads one message (type mt) from r, to its end, and returns 0 to
// go on reading, or the close code and reason that end the socket.
type Handler func(mt int, r io.Reader) (code int, reason string)

// Socket is a server-side WebSocket read with no goroutine while it is
// idle: its reader is parked in a park.Parker and runs (in a goroutine of
// the parker's) when data comes, reads every message that can be read
// without waiting, and parks again.
type Socket struct {
	*Keeper
	C      *websocket.Conn
	u      *Upgraded
	h      *park.Handle
	handle Handler
	done   func()
}

// KeepOptions are a socket's heartbeat and limits (see Keep).
type KeepOptions struct {
	Ping, PongTimeout time.Duration
	MaxMessage        int64
}

// Serve starts the heartbeat and the parked reader of u. handle is called
// for each message; pings and pongs between messages are answered and
// recorded here. afterClose, if set, runs once the socket is closed (see
// Keep). done runs once when the reader has ended, after the close:
// either from the reader's goroutine or from the closer's. Nothing is read
// before Start.
func Serve(p *park.Parker, u *Upgraded, o KeepOptions, handle Handler, afterClose, done func()) (*Socket, error) {
	s := &Socket{C: u.Conn, u: u, handle: handle, done: done}
	h, err := p.Register(u.pc, s.ready)
	if err != nil {
		u.Close()
		return nil, err
	}
	s.h = h
	var wasParked bool
	s.Keeper = Keep(u.Conn, o.Ping, o.PongTimeout, o.MaxMessage, func() {
		if afterClose != nil {
			afterClose()
		}
		if wasParked {
			s.done() // nobody else will
		}
	})
	// Out of the poller before the descriptor is closed (and reused).
	s.beforeClose = func() { wasParked = s.h.Stop() }
	return s, nil
}

// Start reads what is already there, or parks the reader.
func (s *Socket) Start() {
	if s.more() {
		go s.ready()
		return
	}
	s.park()
}

// more reports whether data is buffered above the socket: in gorilla's
// reader, in the probe, or in crypto/tls. What is in the socket itself the
// poller sees.
func (s *Socket) more() bool {
	return s.u.br.Buffered() > 0 || s.u.pc.probe()
}

func (s *Socket) park() {
	if !s.h.Park() {
		// Stopped (the socket is being closed) or not watchable (its
		// connection is closed).
		s.Close(websocket.CloseAbnormalClosure, "peer_gone")
		s.done()
	}
}

// ready is the reader: it runs when the socket is readable.
func (s *Socket) ready() {
	for {
		if code, reason := s.step(); code != 0 {
			s.Close(code, reason)
			s.done()
			return
		}
		if !s.more() {
			break
		}
	}
	s.park()
}

// step reads the next frame: a ping or pong here (gorilla would go on to
// wait for the next message, holding this goroutine), anything else with
// gorilla. It is called at a frame boundary (handlers read messages to
// their end).
func (s *Socket) step() (int, string) {
	br := s.u.br
	p, err := br.Peek(2)
	if err != nil {
		return ReadCloseCode(err)
	}
	op := int(p[0] & 0x0f)
	n := int(p[1] & 0x7f)
	// FIN, no RSV bits, masked (a client's), a control frame's length.
	if (op == websocket.PingMessage || op == websocket.PongMessage) && p[0]&0xf0 == 0x80 && p[1]&0x80 != 0 && n <= 125 {
		f, err := br.Peek(2 + 4 + n)
		if err != nil {
			return ReadCloseCode(err)
		}
		if op == websocket.PongMessage {
			s.Pong()
		} else {
			var payload [125]byte
			key := f[2:6]
			for i, b := range f[6:] {
				payload[i] = b ^ key[i&3]
			}
			// As gorilla's default ping handler: errors are the writers'.
			_ = s.C.WriteControl(websocket.PongMessage, payload[:n], time.Now().Add(time.Second))
		}
		br.Discard(len(f))
		return 0, ""
	}
	mt, r, err := s.C.NextReader()
	if err != nil {
		return ReadCloseCode(err)
	}
	return s.handle(mt, r)
}
