// Package longpoll holds the few types a front (the proxy's HTTP/1.1
// fast path) and a long-poll handler (a bridge) exchange, so that the
// front can serve and park a poll without importing the bridge: a
// mounted http.Handler that also implements Handler serves such polls.
//
// The contract: StartPoll decides before anything is consumed; Next
// either returns the answer to write now or registers wake, which the
// handler calls exactly once (a command arrived, the wait's deadline,
// the session ended, the server drains) and after which the front calls
// Next again; the front reports the write with Written, or the client's
// going away before any answer with Cancel. Exactly one of Written and
// Cancel ends a poll.
package longpoll

import (
	"crypto/tls"
	"net"
	"net/http"

	"github.com/edgeshim/edgeshim/limits/accesslog"
)

// Request is a GET whose head the front parsed.
type Request struct {
	// Path is the request's path (raw and decoded are the same).
	Path string
	// RawQuery is the query without '?'.
	RawQuery string
	// Header holds the request's header fields.
	Header http.Header
	// RemoteAddr is the client's address, as http.Request.RemoteAddr.
	RemoteAddr string
	// TLS is the connection's state.
	TLS *tls.ConnectionState
	// Conn is the client connection (for the receipt check; closed
	// beneath TLS when the answer was not received).
	Conn net.Conn
	// Record is the request's access log record (never nil).
	Record *accesslog.Record
}

// Answer is a response to write: status, header fields, body.
type Answer struct {
	Status int
	Header http.Header
	Body   []byte
}

// Handler is implemented by http.Handlers that serve long-polls for a
// front that parks them.
type Handler interface {
	// StartPoll begins serving r; ok is false when r is not a request
	// the front may serve this way (nothing was done: serve it through
	// net/http).
	StartPoll(r *Request) (p Poll, ok bool)
}

// Poll is one long-poll being served.
type Poll interface {
	// Next returns the answer to write now, or nil after registering
	// wake, which is called once, from any goroutine, and must not block.
	Next(wake func()) *Answer
	// Written reports the answer's write: nil when it was fully written
	// and flushed. It may block (the receipt check of ack: write).
	Written(err error)
	// Cancel ends a poll whose client went away before any answer.
	Cancel()
}
