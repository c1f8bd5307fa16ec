package tlsterm

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ErrKeyFile is returned for a malformed session ticket key file.
var ErrKeyFile = errors.New("bad ticket key file")

// ticketKeys owns the session ticket keys of the live tls.Config: the first
// key issues tickets, all of them resume. Without a key file it generates a
// key every rotate, keeps enough of them that every ticket resumes for as
// long as clients are told it is valid (see keptKeys), and persists them in
// the data dir so that a restart resumes the fleet's tickets (see
// keptfile.go); with a key file the file is the truth (shared by replicas)
// and is re-read on Reload.
type ticketKeys struct {
	t       *Terminator
	mu      sync.Mutex
	keys    [][32]byte
	created []time.Time // of keys, generated keys only
	path    string      // where generated keys are kept; "" with a key file

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func (t *Terminator) startTickets() error {
	st := t.opts.TLS.SessionTickets
	if st.Disabled {
		t.base.SessionTicketsDisabled = true
		return nil
	}
	tk := &ticketKeys{t: t}
	t.tickets = tk
	if st.KeyFile != "" {
		return tk.loadFile()
	}
	keep := keptKeys(st.Rotate.D(), st.Keep)
	tk.path = filepath.Join(t.opts.DataDir, keptFileName)
	next, err := tk.loadKept(st.Rotate.D(), keep)
	if err != nil {
		return err
	}
	tk.stop, tk.done = make(chan struct{}), make(chan struct{})
	go tk.rotateLoop(next, st.Rotate.D(), keep)
	return nil
}

func newKey() ([32]byte, error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("ticket key: %w", err)
	}
	return k, nil
}

// keyID is a short public fingerprint of a key, for logs (never the key).
func keyID(k [32]byte) string {
	s := sha256.Sum256(k[:])
	return hex.EncodeToString(s[:4])
}

func (tk *ticketKeys) set(keys [][32]byte) {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	tk.keys = keys
	tk.t.base.SetSessionTicketKeys(keys)
	if g := tk.t.gen.Load(); g != nil { // client_auth's generation (installClientTrust)
		g.SetSessionTicketKeys(keys)
	}
}

// rotateLoop makes a new issuing key every period, the first after first,
// keeping keep keys, and persists them.
func (tk *ticketKeys) rotateLoop(first, period time.Duration, keep int) {
	defer close(tk.done)
	timer := time.NewTimer(first)
	defer timer.Stop()
	for {
		select {
		case <-tk.stop:
			return
		case <-timer.C:
		}
		timer.Reset(period)
		k, err := newKey()
		if err != nil {
			tk.t.log.Error("ticket key rotation failed; keeping the current keys", "err", err)
			continue
		}
		tk.mu.Lock()
		keys := append([][32]byte{k}, tk.keys...)
		created := append([]time.Time{time.Now()}, tk.created...)
		tk.mu.Unlock()
		if len(keys) > keep {
			keys, created = keys[:keep], created[:keep]
		}
		tk.setKept(keys, created)
		tk.t.log.Info("session ticket key rotated", "ticket_key_id", keyID(k), "keys", len(keys))
	}
}

// loadFile reads the shared key file; on error the current keys stay.
func (tk *ticketKeys) loadFile() error {
	path := tk.t.opts.TLS.SessionTickets.KeyFile
	keys, err := readKeyFile(path)
	if err != nil {
		return err
	}
	tk.set(keys)
	tk.t.log.Info("session ticket keys loaded", "file", path, "ticket_key_id", keyID(keys[0]), "keys", len(keys))
	return nil
}

func readKeyFile(path string) ([][32]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls.session_tickets.key_file: %w", err)
	}
	keys, err := parseKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("tls.session_tickets.key_file %s: %w", path, err)
	}
	return keys, nil
}

// parseKeyFile reads one key per line, 64 hex characters (32 bytes),
// newest (issuing) first; blank lines and # comments are ignored.
func parseKeyFile(data []byte) ([][32]byte, error) {
	var keys [][32]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b, err := hex.DecodeString(line)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("%w: line %d: want 64 hex characters", ErrKeyFile, n)
		}
		if len(keys) == 32 {
			return nil, fmt.Errorf("%w: more than 32 keys", ErrKeyFile)
		}
		keys = append(keys, [32]byte(b))
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no keys", ErrKeyFile)
	}
	return keys, nil
}

func (tk *ticketKeys) close() {
	if tk == nil || tk.stop == nil {
		return
	}
	tk.stopOnce.Do(func() { close(tk.stop) })
	<-tk.done
}
