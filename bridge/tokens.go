package bridge

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ErrTokens is wrapped by every error about the content of a tokens file.
var ErrTokens = errors.New("bad tokens file")

// TokensError is a problem on one line of a tokens file.
type TokensError struct {
	// Line is the 1-based line number.
	Line int
	// Msg says what is wrong; it never contains a token or a hash.
	Msg string
}

func (e *TokensError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// Unwrap makes every TokensError match ErrTokens.
func (e *TokensError) Unwrap() error { return ErrTokens }

// maxTokensFile bounds a tokens file (250,000 devices take about 20 MB).
const maxTokensFile = 256 << 20

// maxTokensLine bounds one line: an id of at most 128 bytes, a 64-byte
// hash, quotes, separators and a comment.
const maxTokensLine = 4096

type tokenEntry struct {
	hash [sha256.Size]byte
	line int32
}

// tokenStore maps device ids to the SHA-256 of their token, and back. It
// is immutable once parsed: a reload builds a new one.
type tokenStore struct {
	byDevice map[string]tokenEntry
	byHash   map[[sha256.Size]byte]string
}

// Len returns the number of devices.
func (s *tokenStore) Len() int { return len(s.byDevice) }

// check reports whether token is device's. The hash of the presented
// token is compared in constant time with the stored one; an unknown
// device costs the same comparison.
func (s *tokenStore) check(device, token string) bool {
	sum := sha256.Sum256([]byte(token))
	e, ok := s.byDevice[device]
	eq := subtle.ConstantTimeCompare(sum[:], e.hash[:]) == 1
	return ok && eq
}

// lookup returns the device whose token this is (for poll paths without
// {device}). The map is keyed by the token's SHA-256, never the token:
// its timing tells nothing about a token that is not already known.
func (s *tokenStore) lookup(token string) (string, bool) {
	sum := sha256.Sum256([]byte(token))
	d, ok := s.byHash[sum]
	return d, ok
}

// loadTokens reads a tokens file. Its format follows its extension: .yaml
// and .yml are a flat YAML map "device: sha256hex"; any other name is the
// line format "device sha256hex". Both take # comments and blank lines.
func loadTokens(path string) (*tokenStore, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokensFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxTokensFile {
		return nil, fmt.Errorf("%s: %w: larger than %d MiB", path, ErrTokens, maxTokensFile>>20)
	}
	s, err := parseTokens(data, isYAMLName(path))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

func isYAMLName(path string) bool {
	ext := strings.ToLower(filepath.Ext(path))
	return ext == ".yaml" || ext == ".yml"
}

// parseTokens parses a tokens file in one pass, linear in its size. Every
// line is an entry, a comment or blank; anything else is an error naming
// its line. Duplicate device ids and duplicate hashes (two devices with
// one token) are errors naming both lines.
func parseTokens(data []byte, yamlFormat bool) (*tokenStore, error) {
	n := bytes.Count(data, []byte{'\n'}) + 1
	s := &tokenStore{byDevice: make(map[string]tokenEntry, n), byHash: make(map[[sha256.Size]byte]string, n)}
	for lineNo := 1; len(data) > 0; lineNo++ {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		line = bytes.TrimSuffix(line, []byte{'\r'})
		if len(line) > maxTokensLine {
			return nil, &TokensError{lineNo, fmt.Sprintf("longer than %d bytes", maxTokensLine)}
		}
		var dev, hexHash string
		var msg string
		if yamlFormat {
			dev, hexHash, msg = yamlEntry(line, lineNo)
		} else {
			dev, hexHash, msg = plainEntry(line)
		}
		if msg != "" {
			return nil, &TokensError{lineNo, msg}
		}
		if dev == "" && hexHash == "" {
			continue // blank or comment
		}
		if !ValidDeviceID(dev) {
			return nil, &TokensError{lineNo, fmt.Sprintf("invalid device id %q (want 1-128 of A-Z a-z 0-9 . _ : -)", dev)}
		}
		var e tokenEntry
		if len(hexHash) != 2*sha256.Size {
			return nil, &TokensError{lineNo, fmt.Sprintf("device %q: want the SHA-256 of its token, 64 hex characters", dev)}
		}
		if _, err := hex.Decode(e.hash[:], []byte(hexHash)); err != nil {
			return nil, &TokensError{lineNo, fmt.Sprintf("device %q: want the SHA-256 of its token, 64 hex characters", dev)}
		}
		e.line = int32(lineNo)
		if prev, dup := s.byDevice[dev]; dup {
			return nil, &TokensError{lineNo, fmt.Sprintf("device %q is already on line %d", dev, prev.line)}
		}
		if other, dup := s.byHash[e.hash]; dup {
			return nil, &TokensError{lineNo, fmt.Sprintf("device %q has the same token hash as %q on line %d", dev, other, s.byDevice[other].line)}
		}
		s.byDevice[dev] = e
		s.byHash[e.hash] = dev
	}
	return s, nil
}

// plainEntry reads "device sha256hex [# comment]".
func plainEntry(line []byte) (dev, hash, msg string) {
	f := strings.Fields(string(line))
	if len(f) == 0 || strings.HasPrefix(f[0], "#") {
		return "", "", ""
	}
	if len(f) > 2 && strings.HasPrefix(f[2], "#") {
		f = f[:2]
	}
	if len(f) != 2 {
		return "", "", "want \"device sha256hex\""
	}
	if strings.HasSuffix(f[0], ":") {
		return "", "", "want \"device sha256hex\" (this looks like YAML: name the file .yaml)"
	}
	return f[0], f[1], ""
}

// yamlEntry reads one line of a flat YAML map: `device: sha256hex`, with
// optional single or double quotes (no escapes) and a trailing # comment.
// A leading "---" is allowed on line 1. Indentation (nesting), flow
// collections, anchors, tags, multi-line scalars and escapes are errors.
func yamlEntry(line []byte, lineNo int) (dev, hash, msg string) {
	t := strings.TrimLeft(string(line), " \t")
	if t == "" || t[0] == '#' {
		return "", "", ""
	}
	if lineNo == 1 && strings.TrimRight(t, " \t") == "---" {
		return "", "", ""
	}
	if len(t) != len(line) {
		return "", "", "indented line: the tokens file is a flat map of device: sha256hex"
	}
	dev, rest, msg := yamlScalar(t, true)
	if msg != "" {
		return "", "", msg
	}
	if !strings.HasPrefix(rest, ":") {
		return "", "", "want \"device: sha256hex\""
	}
	rest = rest[1:]
	if strings.TrimRight(rest, " \t") == "" {
		return "", "", fmt.Sprintf("device %q has no hash (nested values are not supported)", dev)
	}
	if rest[0] != ' ' && rest[0] != '\t' {
		return "", "", "want \"device: sha256hex\" (a space after the colon)"
	}
	rest = strings.TrimLeft(rest, " \t")
	if rest == "" || rest[0] == '#' {
		return "", "", fmt.Sprintf("device %q has no hash", dev)
	}
	hash, rest, msg = yamlScalar(rest, false)
	if msg != "" {
		return "", "", msg
	}
	rest = strings.TrimLeft(rest, " \t")
	if rest != "" && rest[0] != '#' {
		return "", "", "unexpected text after the hash"
	}
	return dev, hash, ""
}

// yamlScalar reads a quoted or plain scalar at the start of s and returns
// it and the rest. A plain key ends at ": " or a final ':'; a plain value
// at whitespace.
func yamlScalar(s string, key bool) (val, rest, msg string) {
	if q := s[0]; q == '\'' || q == '"' {
		end := strings.IndexByte(s[1:], q)
		if end < 0 {
			return "", "", "unterminated quoted string"
		}
		val = s[1 : 1+end]
		if strings.ContainsAny(val, `\'"`) {
			return "", "", "escapes are not supported in quoted strings"
		}
		return val, s[2+end:], ""
	}
	if strings.ContainsRune("{[]}&*!|>%@`,?-", rune(s[0])) && (len(s) == 1 || s[0] != '-' || s[1] == ' ') {
		return "", "", fmt.Sprintf("unsupported YAML (%q): the tokens file is a flat map of device: sha256hex", s[0])
	}
	if key {
		i := strings.Index(s, ": ")
		if j := strings.Index(s, ":\t"); j >= 0 && (i < 0 || j < i) {
			i = j
		}
		if i < 0 {
			if strings.HasSuffix(s, ":") {
				i = len(s) - 1
			} else {
				return "", "", "want \"device: sha256hex\""
			}
		}
		return strings.TrimRight(s[:i], " \t"), s[i:], ""
	}
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		i = len(s)
	}
	return s[:i], s[i:], ""
}
