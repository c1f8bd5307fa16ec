package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/edgeshim/edgeshim/limits"
)

// ClientBodyError: reading the client's request body failed (over the
// body limit, a decompression bomb, the client gone mid-body). It is the
// client's fault, never the backend's: it does not count towards
// ejecting a backend and is not retried.
type ClientBodyError struct{ err error }

func (e *ClientBodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *ClientBodyError) Unwrap() error { return e.err }

// BodyError names a failed read of the client's body, on every path: the
// body ended before its length because the client went away (its
// connection or stream ended: ErrClientGone, 499), else it could not be
// read (too slow, a broken encoding: 400) or was too large (413).
func BodyError(err error) error {
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return Because(ErrClientGone, &ClientBodyError{err})
	}
	return &ClientBodyError{err}
}

// BackendError is a failed exchange with the backend it was with.
type BackendError struct {
	Backend string // its name (Backend.Name)
	Key     string // the backend's key in the route's failure log (Backend.LogKey)
	Err     error
}

func (e *BackendError) Error() string { return e.Backend + ": " + e.Err.Error() }
func (e *BackendError) Unwrap() error { return e.Err }

// Failed names err as a failed exchange with b.
func (b *Backend) Failed(err error) error {
	return &BackendError{Backend: b.Name, Key: b.LogKey, Err: err}
}

// The failures of an exchange that the paths name (besides ErrNoBackend,
// *ClientBodyError, *BackendError, and net.Error and context errors from
// the network and the standard library).
var (
	// ErrClientGone: the client went away before it was answered (the
	// request's context was cancelled, the fast path's watcher saw the
	// connection end, or its body ended early). Answered 499.
	ErrClientGone = errors.New("client went away")
	// ErrRequestTimeout: the route's timeouts.request passed. 504, not
	// counted against the backend.
	ErrRequestTimeout = errors.New("request timeout")
	// ErrHeaderTimeout: the backend did not answer within
	// timeouts.response_header. 504, the backend's fault.
	ErrHeaderTimeout = errors.New("timeout awaiting response headers")
	// ErrAborted: the server closed the connection (Close, or the end of
	// Shutdown's grace). Nobody is answered; not the backend's fault.
	ErrAborted = errors.New("connection closed by the server")
	// ErrBadResponse: the backend's response is malformed (framing). 502,
	// the backend's fault.
	ErrBadResponse = errors.New("malformed HTTP response from backend")
	// ErrResponseHeadTooLarge: the backend's response head is over
	// maxRespHead. 502, the backend's fault.
	ErrResponseHeadTooLarge = fmt.Errorf("%w: head over %d bytes", ErrBadResponse, maxRespHead)
)

// because wraps err in the failure why names (ErrClientGone, ...).
func Because(why, err error) error { return fmt.Errorf("%w: %w", why, err) }

// FailClass is how a failed exchange is answered and what it counts for.
type FailClass struct {
	Code         int    // the status answered
	Msg          string // the error message answered and logged
	RetryAfter   bool   // a Retry-After goes with it
	BackendFault bool   // it counts towards ejecting the backend and is logged as its error
}

// Classify is the one mapping of exchange errors to answers, by type
// (errors.Is/As), for the fast path and net/http's paths alike. The
// order matters: a client's fault wins over what it caused downstream.
func Classify(err error) FailClass {
	var cbe *ClientBodyError
	switch {
	case limits.IsTooLarge(err):
		return FailClass{Code: http.StatusRequestEntityTooLarge, Msg: "body too large"}
	case errors.Is(err, ErrNoBackend):
		return FailClass{Code: http.StatusServiceUnavailable, Msg: "no healthy backend", RetryAfter: true}
	case errors.Is(err, ErrClientGone):
		return FailClass{Code: StatusClientClosed, Msg: "client went away"}
	case errors.As(err, &cbe):
		return FailClass{Code: http.StatusBadRequest, Msg: "request body could not be read"}
	case errors.Is(err, ErrAborted), errors.Is(err, context.Canceled):
		// Cancelled by the server itself (a client's cancel is
		// ErrClientGone).
		return FailClass{Code: http.StatusBadGateway, Msg: "server closing"}
	case errors.Is(err, ErrRequestTimeout):
		return FailClass{Code: http.StatusGatewayTimeout, Msg: "backend timeout"}
	case errors.Is(err, ErrHeaderTimeout), IsTimeout(err):
		return FailClass{Code: http.StatusGatewayTimeout, Msg: "backend timeout", BackendFault: true}
	}
	return FailClass{Code: http.StatusBadGateway, Msg: "backend unavailable", BackendFault: true}
}

// StatusClientClosed is logged and counted when the client went away before
// the backend answered (nginx's 499).
const StatusClientClosed = 499

// IsTimeout: a deadline passed (the route's request timeout, a dial or
// response header timeout: http.Transport's are net.Errors that say so).
func IsTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isDialError: the dial failed (nothing reached the backend).
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// HeaderTimeout names a timeout waiting for a response head
// (ErrHeaderTimeout); other errors are returned as they are.
func HeaderTimeout(err error) error {
	if err != nil && IsTimeout(err) {
		return Because(ErrHeaderTimeout, err)
	}
	return err
}
