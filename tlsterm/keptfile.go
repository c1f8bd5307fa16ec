package tlsterm

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Generated session ticket keys are kept in the data dir, so that a
// restart does not make the whole fleet do full handshakes at once.
//
// How long keys are kept. Go's crypto/tls tells every TLS 1.3 client that
// its ticket is valid for 7 days: the NewSessionTicket lifetime is the
// constant maxSessionTicketLifetime (crypto/tls/common.go;
// handshake_server_tls13.go sets m.lifetime from it), and neither
// tls.Config, WrapSession nor SessionState can change it. WrapSession and
// UnwrapSession could only refuse tickets earlier, which would not make
// the advertised lifetime true either. So edgeshim ties the keys to the
// lifetime instead: a key issues tickets for rotate and is kept until the
// last ticket it issued has outlived the 7 days, that is
// keptKeys = max(keep, 1 + ceil(7d / rotate)) keys (15 with the default
// 12h), capped at 32 (config validation asks rotate >= 6h for generated
// keys, so the cap is never reached there). Checking a ticket against
// more keys costs one HMAC per key, only for tickets that do not match
// the newest ones.

// ticketLifetime is the TLS 1.3 ticket lifetime Go's crypto/tls advertises.
const ticketLifetime = 7 * 24 * time.Hour

// keptFileName is the file of generated keys in the data dir.
const keptFileName = "session-ticket-keys"

// maxKeys bounds the keys in use, as the key file does.
const maxKeys = 32

// keptKeys is how many generated keys are kept so that every ticket
// resumes for as long as its advertised lifetime.
func keptKeys(rotate time.Duration, keep int) int {
	if rotate <= 0 {
		return max(1, min(keep, maxKeys))
	}
	need := 1 + int((ticketLifetime+rotate-1)/rotate)
	return max(1, min(max(keep, need), maxKeys))
}

// ErrKeptFile is returned for a malformed file of kept ticket keys.
var ErrKeptFile = errors.New("bad kept ticket key file")

// parseKept reads the kept keys: one per line, 64 hex characters, a space
// and the key's creation time (RFC 3339), newest first; # comments and
// blank lines are ignored.
func parseKept(data []byte) ([][32]byte, []time.Time, error) {
	var keys [][32]byte
	var created []time.Time
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, at, ok := strings.Cut(line, " ")
		b, err := hex.DecodeString(k)
		if !ok || err != nil || len(b) != 32 {
			return nil, nil, fmt.Errorf("%w: line %d: want 64 hex characters, a space and a time", ErrKeptFile, n)
		}
		ts, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: line %d: time: %w", ErrKeptFile, n, err)
		}
		if len(keys) > 0 && ts.After(created[len(created)-1]) {
			return nil, nil, fmt.Errorf("%w: line %d: keys must be newest first", ErrKeptFile, n)
		}
		if len(keys) == maxKeys {
			return nil, nil, fmt.Errorf("%w: more than %d keys", ErrKeptFile, maxKeys)
		}
		keys = append(keys, [32]byte(b))
		created = append(created, ts)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrKeptFile, err)
	}
	return keys, created, nil
}

func formatKept(keys [][32]byte, created []time.Time) []byte {
	var b bytes.Buffer
	b.WriteString("# edgeshim session ticket keys (secret): newest (issuing) first, with their creation time\n")
	for i, k := range keys {
		fmt.Fprintf(&b, "%s %s\n", hex.EncodeToString(k[:]), created[i].UTC().Format(time.RFC3339))
	}
	return b.Bytes()
}

// loadKept starts the generated keys: the kept ones that are still fresh
// (younger than rotate × keep), and a new issuing key if the newest is
// older than rotate. It returns when the next rotation is due. A missing
// or unreadable file only costs resumption: it is logged and replaced.
func (tk *ticketKeys) loadKept(rotate time.Duration, keep int) (time.Duration, error) {
	now := time.Now()
	var keys [][32]byte
	var created []time.Time
	data, err := os.ReadFile(tk.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		tk.t.log.Warn("kept session ticket keys unreadable; starting with a new key", "file", tk.path, "err", err)
	default:
		if keys, created, err = parseKept(data); err != nil {
			tk.t.log.Warn("kept session ticket keys malformed; starting with a new key", "file", tk.path, "err", err)
			keys, created = nil, nil
		}
	}
	// Fresh: could still be kept, and not from the future (a clock that
	// went back would otherwise keep a key past its time).
	retain := rotate * time.Duration(keep)
	n := 0
	for n < len(keys) && now.Sub(created[n]) < retain && !created[n].After(now.Add(time.Minute)) {
		n++
	}
	keys, created = keys[:n], created[:n]
	loaded := len(keys)
	if len(keys) == 0 || now.Sub(created[0]) >= rotate {
		k, err := newKey()
		if err != nil {
			return 0, err
		}
		keys, created = append([][32]byte{k}, keys...), append([]time.Time{now}, created...)
		if len(keys) > keep {
			keys, created = keys[:keep], created[:keep]
		}
	}
	// A data dir that cannot be written (read-only root, say) costs only
	// resumption across restarts: setKept logged it.
	_ = tk.setKept(keys, created)
	tk.t.log.Info("session ticket keys ready", "ticket_key_id", keyID(keys[0]), "keys", len(keys), "loaded", loaded,
		"file", tk.path, "resume_for", (rotate * time.Duration(keep-1)).String())
	return max(0, rotate-now.Sub(created[0])), nil
}

// setKept puts the keys in force and persists them. A failed write is
// logged and returned; the keys in memory serve anyway.
func (tk *ticketKeys) setKept(keys [][32]byte, created []time.Time) error {
	tk.mu.Lock()
	tk.created = created
	tk.mu.Unlock()
	tk.set(keys)
	if err := writeFileAtomic(tk.path, formatKept(keys, created)); err != nil {
		tk.t.log.Error("session ticket keys not persisted; a restart will not resume tickets", "file", tk.path, "err", err)
		return fmt.Errorf("persist session ticket keys: %w", err)
	}
	return nil
}

// writeFileAtomic writes data to path with mode 0600: a temporary file in
// the same directory, synced, then renamed over path, so that a crash
// leaves the old file or the new one, never a part.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
