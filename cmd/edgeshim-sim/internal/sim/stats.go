package sim

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// stats are the run's counters, shared by every device.
type stats struct {
	connect, handshake, poll, deliver hist
	// handshakeW and pollW cover the measurement window only (the steady
	// state after ramp-up), while inWindow is set.
	handshakeW, pollW hist
	inWindow          atomic.Bool

	polls, pollsOK, handshakes, resumed atomic.Int64
	telemetry, telemetryOK              atomic.Int64
	online                              atomic.Int64
	failures                            atomic.Int64

	mu       sync.Mutex
	codes    map[int]int64
	refusals map[string]int64
}

func newStats() *stats {
	return &stats{codes: map[int]int64{}, refusals: map[string]int64{}}
}

func (s *stats) addHandshake(d time.Duration) {
	s.handshake.add(d)
	if s.inWindow.Load() {
		s.handshakeW.add(d)
	}
}

func (s *stats) addPoll(d time.Duration) {
	s.poll.add(d)
	if s.inWindow.Load() {
		s.pollW.add(d)
	}
}

func (s *stats) code(c int) {
	s.mu.Lock()
	s.codes[c]++
	s.mu.Unlock()
}

// refused counts a refusal or failure by reason.
func (s *stats) refused(reason string) {
	s.failures.Add(1)
	s.mu.Lock()
	s.refusals[reason]++
	s.mu.Unlock()
}

// refusalOf names an HTTP refusal: "503+retry-after" or "503".
func refusalOf(code int, retryAfter string) string {
	r := strconv.Itoa(code)
	if retryAfter != "" {
		r += "+retry-after"
	}
	return r
}

// errorClass names a connection-level failure.
func errorClass(err error) string {
	var ne net.Error
	var re tls.RecordHeaderError
	var ae tls.AlertError
	var ce *tls.CertificateVerificationError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "local_resources"
	case errors.As(err, &re), errors.As(err, &ae), errors.As(err, &ce):
		return "tls"
	default:
		return "other"
	}
}

func (s *stats) snapshotMaps() (map[string]int64, map[string]int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	codes := make(map[string]int64, len(s.codes))
	for c, n := range s.codes {
		codes[strconv.Itoa(c)] = n
	}
	ref := make(map[string]int64, len(s.refusals))
	for r, n := range s.refusals {
		ref[r] = n
	}
	return codes, ref
}
