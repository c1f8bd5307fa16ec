package proxy

import (
	"errors"
	"io"
	"net/http"
	"sync"

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
	return &clientBodyError{b.err}
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

// answerFor is how a failed exchange is answered, on net/http's path and
// the fast path alike: its status, message, and whether a Retry-After
// goes with it. It logs backend faults, aggregated by backend (see
// faillog): the first at once, then a line per interval with a count.
func (rp *routeProxy) answerFor(err error) (code int, msg string, retryAfter bool) {
	var cbe *clientBodyError
	switch {
	case limits.IsTooLarge(err):
		return http.StatusRequestEntityTooLarge, "body too large", false
	case errors.As(err, &cbe):
		rp.log.Debug("request body could not be read", "err", err)
		return http.StatusBadRequest, "request body could not be read", false
	case errors.Is(err, ErrNoBackend):
		rp.fails.Fail(noBackendKey, "no healthy backend")
		return http.StatusServiceUnavailable, "no healthy backend", true
	}
	key, backend := "backend", ""
	var be *backendError
	if errors.As(err, &be) {
		key, backend, err = be.key, be.backend, be.err
	}
	if isTimeout(err) {
		rp.fails.Fail(key, "backend timeout", "backend", backend, "err", err)
		return http.StatusGatewayTimeout, "backend timeout", false
	}
	rp.fails.Fail(key, "backend error", "backend", backend, "err", err)
	return http.StatusBadGateway, "backend unavailable", false
}

// answered records that b answered: a backend (and the route) failing
// until now is logged as answering again.
func (rp *routeProxy) answered(b *backend) {
	rp.fails.Recover(b.logKey, "backend answering again", "backend", b.name)
	rp.fails.Recover(noBackendKey, "backends answering again")
}
