package proxy

import (
	"bytes"
	"log"
	"log/slog"
)

// errorLog is net/http's ErrorLog: its lines go to the logger at debug
// level, and failed TLS handshakes (which net/http reports only there) are
// counted.
func errorLog(l *slog.Logger, handshakeFailed func()) *log.Logger {
	return log.New(errorLogWriter{l: l, failed: handshakeFailed}, "", 0)
}

type errorLogWriter struct {
	l      *slog.Logger
	failed func()
}

func (w errorLogWriter) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("TLS handshake error")) && w.failed != nil {
		w.failed()
	}
	w.l.Debug(string(bytes.TrimSpace(p)), "source", "net/http")
	return len(p), nil
}
