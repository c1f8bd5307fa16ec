package proxy

import (
	"bytes"
	"log"
	"log/slog"
)

// errorLog is net/http's ErrorLog: its lines go to the logger at debug
// level. (Failed TLS handshakes, which net/http reported only there, are
// counted by tlsListener, which does the handshakes.)
func errorLog(l *slog.Logger) *log.Logger {
	return log.New(errorLogWriter{l: l}, "", 0)
}

type errorLogWriter struct{ l *slog.Logger }

func (w errorLogWriter) Write(p []byte) (int, error) {
	w.l.Debug(string(bytes.TrimSpace(p)), "source", "net/http")
	return len(p), nil
}
