package proxy

import (
	"errors"
	"io"
	"net/http"
	"sync"

	"github.com/edgeshim/edgeshim/proxy/upstream"
)

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
	return upstream.BodyError(b.err)
}

// noBackendKey is "no healthy backend" in a route's failure log.
const noBackendKey = "no healthy backend"

// answerFor is how a failed exchange is answered, on net/http's path and
// the fast path alike (classify), with its log line: backend faults
// aggregated by backend (see faillog), the first at once, then a line
// per interval with a count; the client's faults at debug level.
func (rp *routeProxy) answerFor(err error) (code int, msg string, retryAfter bool) {
	c := upstream.Classify(err)
	key, backend, cause := "backend", "", err
	var be *upstream.BackendError
	if errors.As(err, &be) {
		key, backend, cause = be.Key, be.Backend, be.Err
	}
	switch {
	case c.BackendFault:
		rp.fails.Fail(key, "backend "+logWhat(c), "backend", backend, "err", cause)
	case errors.Is(err, upstream.ErrNoBackend):
		rp.fails.Fail(noBackendKey, "no healthy backend")
	case errors.Is(err, upstream.ErrRequestTimeout):
		rp.fails.Fail(key, "request timeout", "backend", backend, "err", cause)
	default:
		rp.log.Debug("request not answered by the backend", "reason", c.Msg, "err", err)
	}
	return c.Code, c.Msg, c.RetryAfter
}

func logWhat(c upstream.FailClass) string {
	if c.Code == http.StatusGatewayTimeout {
		return "timeout"
	}
	return "error"
}

// answered records that b answered: its failure count is reset, and a
// backend (and the route) failing until now is logged as answering again.
func (rp *routeProxy) answered(b *upstream.Backend) {
	rp.up.Pool.Success(b)
	if rp.fails.AnyDown() { // else Recover's arguments cost an allocation per request for nothing
		rp.fails.Recover(b.LogKey, "backend answering again", "backend", b.Name)
		rp.fails.Recover(noBackendKey, "backends answering again")
	}
}
