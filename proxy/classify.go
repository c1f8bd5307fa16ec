package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"

	"github.com/edgeshim/edgeshim/limits"
)

// clientBodyError: reading the client's request body failed (over the
// body limit, a decompression bomb, the client gone mid-body). It is the
// client's fault, never the backend's: it does not count towards
// ejecting a backend and is not retried.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *clientBodyError) Unwrap() error { return e.err }

// clientBody records the first read error of a request body that a
// Transport streams to a backend (from its own goroutine).
type clientBody struct {
	io.ReadCloser
	mu  sync.Mutex
	err error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.mu.Lock()
		if b.err == nil {
			b.err = err
		}
		b.mu.Unlock()
	}
	return n, err
}

// failed is the body's read error, wrapped, or nil.
func (b *clientBody) failed() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		return nil
	}
	return bodyError(b.err)
}

// bodyError names a failed read of the client's body, on every path: the
// body ended before its length because the client went away (its
// connection or stream ended: errClientGone, 499), else it could not be
// read (too slow, a broken encoding: 400) or was too large (413).
func bodyError(err error) error {
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return because(errClientGone, &clientBodyError{err})
	}
	return &clientBodyError{err}
}

// backendError is a failed exchange with the backend it was with.
type backendError struct {
	backend string
	key     string // the backend's key in the route's failure log
	err     error
}

func (e *backendError) Error() string { return e.backend + ": " + e.err.Error() }
func (e *backendError) Unwrap() error { return e.err }

func (b *backend) failed(err error) error {
	return &backendError{backend: b.name, key: b.logKey, err: err}
}

// noBackendKey is "no healthy backend" in a route's failure log.
const noBackendKey = "no healthy backend"

// The failures of an exchange that the paths name (besides ErrNoBackend,
// *clientBodyError, *backendError, and net.Error and context errors from
// the network and the standard library).
var (
	// errClientGone: the client went away before it was answered (the
	// request's context was cancelled, the fast path's watcher saw the
	// connection end, or its body ended early). Answered 499.
	errClientGone = errors.New("client went away")
	// errRequestTimeout: the route's timeouts.request passed. 504, not
	// counted against the backend.
	errRequestTimeout = errors.New("request timeout")
	// errHeaderTimeout: the backend did not answer within
	// timeouts.response_header. 504, the backend's fault.
	errHeaderTimeout = errors.New("timeout awaiting response headers")
	// errAborted: the server closed the connection (Close, or the end of
	// Shutdown's grace). Nobody is answered; not the backend's fault.
	errAborted = errors.New("connection closed by the server")
	// errBadResponse: the backend's response is malformed (framing). 502,
	// the backend's fault.
	errBadResponse = errors.New("malformed HTTP response from backend")
	// errResponseHeadTooLarge: the backend's response head is over
	// maxRespHead. 502, the backend's fault.
	errResponseHeadTooLarge = fmt.Errorf("%w: head over %d bytes", errBadResponse, maxRespHead)
)

// because wraps err in the failure why names (errClientGone, ...).
func because(why, err error) error { return fmt.Errorf("%w: %w", why, err) }

// failClass is how a failed exchange is answered and what it counts for.
type failClass struct {
	code         int
	msg          string
	retryAfter   bool // a Retry-After goes with it
	backendFault bool // it counts towards ejecting the backend and is logged as its error
}

// classify is the one mapping of exchange errors to answers, by type
// (errors.Is/As), for the fast path and net/http's paths alike. The
// order matters: a client's fault wins over what it caused downstream.
func classify(err error) failClass {
	var cbe *clientBodyError
	switch {
	case limits.IsTooLarge(err):
		return failClass{code: http.StatusRequestEntityTooLarge, msg: "body too large"}
	case errors.Is(err, ErrNoBackend):
		return failClass{code: http.StatusServiceUnavailable, msg: "no healthy backend", retryAfter: true}
	case errors.Is(err, errClientGone):
		return failClass{code: statusClientClosed, msg: "client went away"}
	case errors.As(err, &cbe):
		return failClass{code: http.StatusBadRequest, msg: "request body could not be read"}
	case errors.Is(err, errAborted), errors.Is(err, context.Canceled):
		// Cancelled by the server itself (a client's cancel is
		// errClientGone).
		return failClass{code: http.StatusBadGateway, msg: "server closing"}
	case errors.Is(err, errRequestTimeout):
		return failClass{code: http.StatusGatewayTimeout, msg: "backend timeout"}
	case errors.Is(err, errHeaderTimeout), isTimeout(err):
		return failClass{code: http.StatusGatewayTimeout, msg: "backend timeout", backendFault: true}
	}
	return failClass{code: http.StatusBadGateway, msg: "backend unavailable", backendFault: true}
}

// answerFor is how a failed exchange is answered, on net/http's path and
// the fast path alike (classify), with its log line: backend faults
// aggregated by backend (see faillog), the first at once, then a line
// per interval with a count; the client's faults at debug level.
func (rp *routeProxy) answerFor(err error) (code int, msg string, retryAfter bool) {
	c := classify(err)
	key, backend, cause := "backend", "", err
	var be *backendError
	if errors.As(err, &be) {
		key, backend, cause = be.key, be.backend, be.err
	}
	switch {
	case c.backendFault:
		rp.fails.Fail(key, "backend "+logWhat(c), "backend", backend, "err", cause)
	case errors.Is(err, ErrNoBackend):
		rp.fails.Fail(noBackendKey, "no healthy backend")
	case errors.Is(err, errRequestTimeout):
		rp.fails.Fail(key, "request timeout", "backend", backend, "err", cause)
	default:
		rp.log.Debug("request not answered by the backend", "reason", c.msg, "err", err)
	}
	return c.code, c.msg, c.retryAfter
}

func logWhat(c failClass) string {
	if c.code == http.StatusGatewayTimeout {
		return "timeout"
	}
	return "error"
}

// answered records that b answered: its failure count is reset, and a
// backend (and the route) failing until now is logged as answering again.
func (rp *routeProxy) answered(b *backend) {
	rp.pool.success(b)
	rp.fails.Recover(b.logKey, "backend answering again", "backend", b.name)
	rp.fails.Recover(noBackendKey, "backends answering again")
}
