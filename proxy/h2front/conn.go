package h2front

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	preface       = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	initialWindow = 65535
	maxWindow     = 1<<31 - 1
	// writeBufSize is the connection's write buffer: a flush writes at
	// most this much at once (one TLS record each 16 KiB).
	writeBufSize = 32 << 10
	// maxRefused is how many streams a connection may have refused for
	// too many running handlers (a rapid-reset flood) before it is sent
	// GOAWAY ENHANCE_YOUR_CALM.
	maxRefusedFactor = 4
)

// ErrConnClosed is what writes on a connection that has ended return.
var ErrConnClosed = errors.New("h2front: connection closed")

// errStreamReset is what a handler's writes return after the client
// reset its stream.
var errStreamReset = errors.New("h2front: stream reset")

var aLongTimeAgo = time.Unix(1, 0)

type conn struct {
	s  *Server
	o  *Options
	nc net.Conn
	cr countingReader
	br *bufio.Reader
	fr *http2.Framer

	ctx    context.Context
	cancel context.CancelFunc
	tls    *tls.ConnectionState
	remote string
	wg     sync.WaitGroup // handlers

	// Writes: frames go into bw through fr under wmu; writers counts
	// the goroutines about to write (and the reader, while it has frames
	// buffered), so that only the last one flushes.
	wmu     sync.Mutex
	bw      *bufio.Writer
	henc    *hpack.Encoder
	enc     func(name, value string) // encField
	hbuf    bytes.Buffer
	werr    error
	wdl     time.Time
	writers atomic.Int32
	lower   map[string]string // header names as sent, per connection

	// mu guards the streams and flow control.
	mu          sync.Mutex
	streams     map[uint32]*stream
	maxStreamID uint32 // highest stream id the client opened
	handlers    uint32 // handlers running (reset streams included)
	refused     int
	sendWindow  int64 // the client's connection window for our DATA
	peerWindow  int64 // SETTINGS_INITIAL_WINDOW_SIZE of the client
	peerFrame   uint32
	recvWindow  int64 // what the client may still send on the connection
	recvUnacked int64 // consumed, not yet given back by WINDOW_UPDATE
	closed      bool
	goingAway   bool // GOAWAY sent (or due once SETTINGS are): no new streams
	settings    bool // our SETTINGS were written: GOAWAY may follow
	pingOut     bool
	rdl         time.Time
	// dlTimer fires at dlAt (zero: not armed) for the streams'
	// deadlines (sweep).
	dlTimer *time.Timer
	dlAt    time.Time
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{s: s, o: &s.o, nc: nc, streams: map[uint32]*stream{},
		sendWindow: initialWindow, peerWindow: initialWindow, peerFrame: 16384,
		recvWindow: int64(s.o.ConnWindow), remote: nc.RemoteAddr().String(), lower: map[string]string{}}
	c.br = bufio.NewReaderSize(nc, 16<<10)
	c.cr.r = c.br
	c.bw = bufio.NewWriterSize(nc, writeBufSize)
	c.fr = http2.NewFramer(c.bw, &c.cr)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = s.o.MaxHeaderListSize
	c.fr.SetMaxReadFrameSize(s.o.MaxReadFrameSize)
	c.fr.SetReuseFrames()
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.enc = c.encField
	if tc, ok := nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
		cs := tc.ConnectionState()
		c.tls = &cs
	}
	ctx := s.o.BaseContext
	if s.o.ConnContext != nil {
		ctx = s.o.ConnContext(ctx, nc)
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	return c
}

// serve reads frames until the connection ends, then ends its streams
// and waits for their handlers.
func (c *conn) serve() {
	err := c.readLoop()
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		c.logf("connection error", "code", http2.ErrCode(ce).String(), "err", c.fr.ErrorDetail())
		c.goAway(http2.ErrCode(ce), true)
		c.linger()
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.goAway(http2.ErrCodeFrameSize, true)
		c.linger()
	case errors.Is(err, errIdle):
		c.goAway(http2.ErrCodeNo, true)
	}
	c.mu.Lock()
	c.closed = true
	if c.dlTimer != nil {
		c.dlTimer.Stop()
	}
	for _, st := range c.streams {
		st.abort(ErrConnClosed)
	}
	c.mu.Unlock()
	c.cancel()
	// Writers blocked on a full socket end with it; those to come fail.
	c.nc.SetWriteDeadline(aLongTimeAgo)
	c.wmu.Lock()
	if c.werr == nil {
		c.werr = ErrConnClosed
	}
	c.wmu.Unlock()
	c.wg.Wait()
}

var errIdle = errors.New("h2front: idle")

// linger reads (and drops) what the client still sends for up to a
// second after a GOAWAY for an error: closing with unread data would
// reset the connection, and the client might never read the GOAWAY.
func (c *conn) linger() {
	c.nc.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(c.br, 1<<20))
}

func (c *conn) logf(msg string, args ...any) {
	c.o.Logger.Debug("http2: "+msg, append(args, "remote", c.remote)...)
}

func (c *conn) readLoop() error {
	c.rdl = time.Now().Add(c.o.ReadHeaderTimeout)
	c.nc.SetReadDeadline(c.rdl)
	var pre [len(preface)]byte
	if _, err := io.ReadFull(c.br, pre[:]); err != nil || string(pre[:]) != preface {
		return errors.Join(err, errors.New("bad preface"))
	}
	c.writers.Add(1) // the reader's hold: released before it blocks
	err := c.write(func() error {
		err := c.fr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.o.MaxConcurrentStreams},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(c.o.StreamWindow)},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: c.o.MaxReadFrameSize},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: c.o.MaxHeaderListSize},
		)
		if err == nil && c.o.ConnWindow > initialWindow {
			err = c.fr.WriteWindowUpdate(0, uint32(c.o.ConnWindow-initialWindow))
		}
		return err
	})
	if err != nil {
		c.release()
		return err
	}
	c.mu.Lock()
	c.settings = true
	drain := c.goingAway
	c.mu.Unlock()
	if drain { // Drain came first: SETTINGS had to be the first frame
		c.goAway(http2.ErrCodeNo, false)
	}
	for first := true; ; first = false {
		if c.br.Buffered() == 0 {
			c.release()
			if err := c.setReadDeadline(first); err != nil {
				return err
			}
			if _, err := c.br.Peek(1); err != nil {
				if isTimeout(err) {
					if err := c.timedOut(); err != nil {
						return err
					}
					c.writers.Add(1)
					continue
				}
				return err
			}
			c.writers.Add(1)
		}
		n0 := c.cr.n
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				_, hdr := f.(*http2.MetaHeadersFrame)
				if err := c.streamError(se, f == nil || hdr); err != nil {
					return err
				}
				continue
			}
			if isTimeout(err) && c.cr.n == n0 {
				continue // no byte of a frame read yet: the top of the loop decides
			}
			c.release()
			return err
		}
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				c.release()
				return http2.ConnectionError(http2.ErrCodeProtocol)
			}
		}
		if err := c.process(f); err != nil {
			c.release()
			return err
		}
	}
}

// setReadDeadline bounds the wait for the next frame: read_header for
// the first, idle without streams, idle/2 (then a PING) with streams.
func (c *conn) setReadDeadline(first bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.goingAway && len(c.streams) == 0 && c.handlers == 0 {
		return errDrained
	}
	var d time.Duration
	switch {
	case first:
		d = c.o.ReadHeaderTimeout
	case c.pingOut:
		d = c.o.PingTimeout
	case len(c.streams) == 0 && c.handlers == 0:
		d = c.o.IdleTimeout
	default:
		d = c.o.IdleTimeout / 2
	}
	var t time.Time
	if d > 0 {
		t = time.Now().Add(d)
	}
	if dt := t.Sub(c.rdl); dt > time.Second || dt < -time.Second || t.IsZero() != c.rdl.IsZero() || c.goingAway {
		c.rdl = t
		c.nc.SetReadDeadline(t)
	}
	return nil
}

var errDrained = errors.New("h2front: drained")

// timedOut: the read deadline passed between frames.
func (c *conn) timedOut() error {
	c.mu.Lock()
	c.rdl = time.Time{}
	idle := len(c.streams) == 0 && c.handlers == 0
	switch {
	case c.goingAway && idle:
		c.mu.Unlock()
		return errDrained
	case c.goingAway:
		c.mu.Unlock()
		return nil // woken by drainSoon: wait for the streams
	case idle || c.pingOut:
		c.mu.Unlock()
		return errIdle
	}
	c.pingOut = true
	c.mu.Unlock()
	return c.write(func() error { return c.fr.WritePing(false, [8]byte{'e', 'd', 'g', 'e'}) })
}

// release ends the reader's hold on flushing, flushing if it was the
// last writer.
func (c *conn) release() {
	if c.writers.Add(-1) == 0 {
		c.wmu.Lock()
		c.flushLocked()
		c.wmu.Unlock()
	}
}

// write runs fn (frame writes through c.fr) under the write lock, and
// flushes unless another writer is pending.
func (c *conn) write(fn func() error) error {
	c.writers.Add(1)
	c.wmu.Lock()
	if c.werr != nil {
		c.writers.Add(-1)
		err := c.werr
		c.wmu.Unlock()
		return err
	}
	err := fn()
	if err != nil {
		c.werr = err
	}
	last := c.writers.Add(-1) == 0
	c.wmu.Unlock()
	if last && err == nil {
		// Let the goroutines made runnable with this one (the other
		// answers of the same read turn) add their frames first.
		runtime.Gosched()
		c.wmu.Lock()
		if c.writers.Load() == 0 {
			err = c.flushLocked()
		}
		c.wmu.Unlock()
	}
	return err
}

func (c *conn) flushLocked() error {
	if c.werr != nil || c.bw.Buffered() == 0 {
		return c.werr
	}
	if wt := c.o.WriteTimeout; wt > 0 {
		// Set again once it has aged by a quarter (up to a second): a
		// flush always has at least 3/4 of the timeout.
		if t := time.Now().Add(wt); t.Sub(c.wdl) > min(time.Second, wt/4) {
			c.wdl = t
			c.nc.SetWriteDeadline(t)
		}
	}
	if err := c.bw.Flush(); err != nil {
		c.werr = err
		return err
	}
	return nil
}

// goAway sends GOAWAY; final: the connection ends now (an error).
func (c *conn) goAway(code http2.ErrCode, final bool) {
	c.mu.Lock()
	c.goingAway = true
	last := c.maxStreamID
	c.mu.Unlock()
	c.write(func() error { return c.fr.WriteGoAway(last, code, nil) })
	if final {
		c.wmu.Lock()
		c.flushLocked()
		c.wmu.Unlock()
	}
}

// drainSoon sends GOAWAY NO_ERROR and wakes the reader, which ends the
// connection once its streams are done.
func (c *conn) drainSoon() {
	c.mu.Lock()
	early := !c.settings
	c.goingAway = true
	c.mu.Unlock()
	if early {
		return // readLoop sends it after its SETTINGS
	}
	c.goAway(http2.ErrCodeNo, false)
	c.nc.SetReadDeadline(aLongTimeAgo)
}

// streamError answers a stream error: RST_STREAM, the stream closed.
// opened: the frame was a request's HEADERS, whose stream id is used.
func (c *conn) streamError(se http2.StreamError, opened bool) error {
	c.logf("stream error", "stream", se.StreamID, "code", se.Code.String(), "err", se.Cause)
	c.mu.Lock()
	if opened && se.StreamID%2 == 1 && se.StreamID > c.maxStreamID {
		// A refused request still used its stream id.
		c.maxStreamID = se.StreamID
	}
	if st := c.streams[se.StreamID]; st != nil {
		st.abort(errStreamReset)
		c.removeLocked(st)
	}
	c.mu.Unlock()
	return c.write(func() error { return c.fr.WriteRSTStream(se.StreamID, se.Code) })
}

func (c *conn) process(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.processHeaders(f)
	case *http2.DataFrame:
		return c.processData(f)
	case *http2.SettingsFrame:
		return c.processSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			c.pingOut = false
			c.mu.Unlock()
			return nil
		}
		return c.write(func() error { return c.fr.WritePing(true, f.Data) })
	case *http2.WindowUpdateFrame:
		return c.processWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.processReset(f)
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			return c.streamError(http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}, false)
		}
		return nil
	case *http2.GoAwayFrame:
		// The client goes: no new streams from it; the ones it has
		// are served.
		return nil
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	case *http2.ContinuationFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil // unknown frame types are ignored
}

// state is a stream id's state from the server's side: the stream if
// open (or half-closed), else whether the id is idle (never used).
func (c *conn) stateLocked(id uint32) (st *stream, idle bool) {
	if st = c.streams[id]; st != nil {
		return st, false
	}
	return nil, id%2 == 1 && id > c.maxStreamID || id%2 == 0
}

func (c *conn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerWindow
			c.peerWindow = int64(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > maxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
		case http2.SettingMaxFrameSize:
			c.peerFrame = s.Val
		case http2.SettingHeaderTableSize:
			v := s.Val
			c.mu.Unlock()
			c.wmu.Lock()
			c.henc.SetMaxDynamicTableSizeLimit(min(v, 4096))
			c.wmu.Unlock()
			c.mu.Lock()
		}
		return nil
	})
	c.wakeAllLocked()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.write(c.fr.WriteSettingsAck)
}

func (c *conn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > maxWindow {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.wakeAllLocked()
		return nil
	}
	st, idle := c.stateLocked(f.StreamID)
	if idle {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if st == nil {
		return nil
	}
	st.sendWindow += int64(f.Increment)
	if st.sendWindow > maxWindow {
		c.mu.Unlock()
		err := c.streamError(http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl}, false)
		c.mu.Lock()
		return err
	}
	st.wake.Broadcast()
	return nil
}

func (c *conn) processReset(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, idle := c.stateLocked(f.StreamID)
	if idle {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if st != nil {
		st.abort(errStreamReset)
		c.removeLocked(st)
	}
	return nil
}

func (c *conn) wakeAllLocked() {
	for _, st := range c.streams {
		st.wake.Broadcast()
	}
}

// removeLocked forgets st (closed both ways, or reset).
func (c *conn) removeLocked(st *stream) {
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
		// What it received and nobody will read goes back to the
		// connection's window.
		if n := st.body.unread(); n > 0 {
			c.recvUnacked += n
		}
	}
	if c.goingAway && len(c.streams) == 0 && c.handlers == 0 {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
}

func (c *conn) processData(f *http2.DataFrame) error {
	id := f.StreamID
	c.mu.Lock()
	st, idle := c.stateLocked(id)
	if idle {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	n := int64(f.Length)
	if n > c.recvWindow {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWindow -= n
	if st == nil || st.remoteDone || st.body == nil {
		// Closed, or half-closed (remote): given back at once.
		c.recvUnacked += n
		c.mu.Unlock()
		c.refund(nil)
		return c.streamError(http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}, false)
	}
	if n > st.recvWindow {
		c.recvUnacked += n
		c.mu.Unlock()
		c.refund(nil)
		return c.streamError(http2.StreamError{StreamID: id, Code: http2.ErrCodeFlowControl}, false)
	}
	st.recvWindow -= n
	data := f.Data()
	st.bodyBytes += int64(len(data))
	if st.declared >= 0 && st.bodyBytes > st.declared || f.StreamEnded() && st.declared >= 0 && st.bodyBytes != st.declared {
		c.recvUnacked += n
		c.mu.Unlock()
		c.refund(nil)
		return c.streamError(http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}, false)
	}
	pad := n - int64(len(data))
	c.recvUnacked += pad
	st.recvUnacked += pad
	st.body.push(data, f.StreamEnded())
	if f.StreamEnded() {
		st.remoteDone = true
		st.rdl = time.Time{}
		if st.handlerDone {
			c.removeLocked(st)
		}
	}
	c.mu.Unlock()
	if pad > 0 {
		c.refund(st)
	}
	return nil
}

// refund sends the WINDOW_UPDATEs due: the connection's when half its
// window is consumed, st's (if not nil) when half of its.
func (c *conn) refund(st *stream) {
	c.mu.Lock()
	var connInc, stInc int64
	if c.recvUnacked >= int64(c.o.ConnWindow)/2 || c.recvUnacked > 0 && c.recvWindow < int64(c.o.StreamWindow) {
		connInc, c.recvUnacked = c.recvUnacked, 0
		c.recvWindow += connInc
	}
	if st != nil && !st.remoteDone && (st.recvUnacked >= int64(c.o.StreamWindow)/2 || st.recvUnacked > 0 && st.recvWindow < 16<<10) {
		stInc, st.recvUnacked = st.recvUnacked, 0
		st.recvWindow += stInc
	}
	id := uint32(0)
	if st != nil {
		id = st.id
	}
	c.mu.Unlock()
	if connInc == 0 && stInc == 0 {
		return
	}
	c.write(func() error {
		if connInc > 0 {
			if err := c.fr.WriteWindowUpdate(0, uint32(connInc)); err != nil {
				return err
			}
		}
		if stInc > 0 {
			return c.fr.WriteWindowUpdate(id, uint32(stInc))
		}
		return nil
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// handlerDone is called by a stream's goroutine when its handler has
// returned and its response is complete (or abandoned).
func (c *conn) handlerDone(st *stream, clean bool) {
	c.mu.Lock()
	c.handlers--
	st.handlerDone = true
	if clean {
		c.refused = 0
	}
	reset := false
	if c.streams[st.id] == st {
		if !st.remoteDone {
			reset = !st.aborted // the request body was not all sent: stop it
		}
		c.removeLocked(st)
	} else if c.goingAway && len(c.streams) == 0 && c.handlers == 0 {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
	c.mu.Unlock()
	if reset {
		c.write(func() error { return c.fr.WriteRSTStream(st.id, http2.ErrCodeNo) })
	}
	c.refund(nil)
}

var _ http.ResponseWriter = (*responseWriter)(nil)
