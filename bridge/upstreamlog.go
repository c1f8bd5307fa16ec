package bridge

import (
	"log/slog"
	"sync"
	"time"

	"github.com/edgeshim/edgeshim/limits/faillog"
)

// upstreamKey is the bridge's upstream in its failure log.
const upstreamKey = "upstream"

// upstreamLog logs a bridge's upstream connect failures aggregated over
// all its sessions (lost links go to the bridge's lostLinks, at info:
// with brokers that close a taken-over session, a move between replicas
// is a lost link, not an outage). A broker outage with N sessions is the
// first failure, a summary per interval, and one
// "upstream reconnected" line with how long it was down and how many
// sessions failed to connect meanwhile, whatever N.
type upstreamLog struct {
	fails *faillog.Log

	mu       sync.Mutex
	sessions int // sessions that failed to connect in this outage
}

func newUpstreamLog(l *slog.Logger) *upstreamLog {
	return &upstreamLog{fails: faillog.New(faillog.Options{Logger: l})}
}

// connectFailed records a session's failed attempt; attempts counts its
// failures in a row, this one included.
func (u *upstreamLog) connectFailed(device string, attempts int, err error, retry time.Duration) {
	if attempts == 1 {
		u.mu.Lock()
		u.sessions++
		u.mu.Unlock()
	}
	u.fails.Fail(upstreamKey, "upstream connect failed", "device", device, "err", err, "retry_in", retry.Round(time.Millisecond).String())
}

// connected records a session's successful connect.
func (u *upstreamLog) connected() {
	if !u.fails.Failing(upstreamKey) {
		return
	}
	u.mu.Lock()
	n := u.sessions
	u.sessions = 0
	u.mu.Unlock()
	u.fails.Recover(upstreamKey, "upstream reconnected", "sessions", n)
}

func (u *upstreamLog) close() { u.fails.Close() }
