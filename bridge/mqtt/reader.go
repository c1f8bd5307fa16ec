package mqtt

import (
	"errors"

	"github.com/edgeshim/edgeshim/limits/park"
)

// The reader. With a Parker and a Pollable socket it holds no goroutine
// while the connection is idle: it is parked, and the parker runs ready
// when the socket is readable. A pass reads without blocking (pollConn)
// and handles every complete packet until the socket has nothing more;
// a partial packet stays in the frameReader, and nothing is left above
// the socket (crypto/tls keeps at most a partial record: its reads end
// with the socket's would-block, never with a whole record unread), so
// the poller sees everything still to come. Otherwise the reader is a
// goroutine blocked in Read, as before parking existed: pollConn reads
// block when not set to non-blocking.
//
// Exactly one party ends the reader (finish): the pass that meets an
// error or whose Park fails, or the closer whose Stop took it parked
// (interrupt).

// startReader starts the reader after the CONNACK: a first pass runs at
// once, as packets may have come with the CONNACK (a resumed session's
// backlog).
func (l *Conn) startReader(p *park.Parker) {
	l.wg.Add(1)
	if pc := findPollConn(l.conn); p != nil && pc != nil {
		if h, err := p.Register(l.conn, l.ready); err == nil {
			if h.Polled() {
				l.pc, l.h = pc, h
				pc.nonblock.Store(true)
			} else {
				h.Stop() // a fallback Parker: a goroutine of ours reads
			}
		}
	}
	go l.ready()
}

// ready is a pass of the reader; it parks the connection or ends it.
func (l *Conn) ready() {
	if err := l.pass(); err != nil {
		l.finish(err)
		return
	}
	l.rd.release()
	if l.h != nil && l.h.Park() {
		return
	}
	// Stopped by a closer (who closes the connection), or not watchable.
	l.finish(ErrLost)
}

// pass reads and handles packets until a read would block (nil) or the
// connection fails. Without a parked reader, reads block: it returns only
// with an error.
func (l *Conn) pass() error {
	for {
		pkt, err := l.rd.next()
		if err != nil {
			if errors.Is(err, ErrTooLarge) {
				l.disconnect(0x95) // packet too large
			}
			return err
		}
		if pkt == nil {
			if err := l.rd.fill(l.conn); err != nil {
				if err == errWouldBlock { // as crypto/tls returns it: unwrapped
					return nil
				}
				return err
			}
			continue
		}
		l.ping.received()
		if err := l.handle(pkt); err != nil {
			return err
		}
	}
}

// interrupt makes the reader end. A parked reader is ended here (or on a
// goroutine of its own when async: the caller may hold the write lock,
// which the loss report may need); a running one sees its read fail on
// the closed connection, or its Park fail.
func (l *Conn) interrupt(async bool) {
	if l.h != nil && l.h.Stop() {
		if async {
			go l.finish(ErrLost)
		} else {
			l.finish(ErrLost)
		}
		return
	}
	_ = l.conn.Close()
}

// finish ends the connection after the reader's end: once.
func (l *Conn) finish(err error) {
	if l.h != nil {
		l.h.Stop() // out of the poller before the descriptor is closed
	}
	l.shutdown(err)
	l.rd.drop()
	l.wg.Done() // before onLost, which may close the connection and wait
	if l.onLost != nil {
		l.onLost(l, l.Err())
	}
}
