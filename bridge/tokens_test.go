package bridge

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func hashHex(tok string) string {
	s := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(s[:])
}

func TestParseTokens(t *testing.T) {
	h1, h2 := hashHex("t1"), hashHex("t2")
	for _, tc := range []struct {
		name    string
		yaml    bool
		in      string
		devices int
		errLine int    // 0: no error
		errHas  string // part of the message
	}{
		{"yaml map", true, "---\n# fleet\ndoor-1: " + h1 + "\n'door-2': \"" + h2 + "\"  # spare\n\n", 2, 0, ""},
		{"yaml crlf", true, "door-1: " + h1 + "\r\ndoor-2: " + strings.ToUpper(h2) + "\r\n", 2, 0, ""},
		{"yaml colon in id", true, "a:b: " + h1 + "\n", 1, 0, ""},
		{"yaml empty", true, "", 0, 0, ""},
		{"yaml nested", true, "door-1:\n  hash: " + h1 + "\n", 0, 1, "no hash"},
		{"yaml indented", true, "door-1: " + h1 + "\n  door-2: " + h2 + "\n", 0, 2, "indented"},
		{"yaml flow map", true, "{door-1: " + h1 + "}\n", 0, 1, "unsupported YAML"},
		{"yaml sequence", true, "- door-1\n", 0, 1, "unsupported YAML"},
		{"yaml anchor", true, "door-1: &a " + h1 + "\n", 0, 1, "unsupported YAML"},
		{"yaml no space", true, "door-1:" + h1 + "\n", 0, 1, "want"},
		{"yaml trailing junk", true, "door-1: " + h1 + " extra\n", 0, 1, "after the hash"},
		{"yaml escapes", true, "\"door\\n1\": " + h1 + "\n", 0, 1, "escapes"},
		{"yaml unterminated", true, "'door-1: " + h1 + "\n", 0, 1, "unterminated"},
		{"yaml dup device", true, "door-1: " + h1 + "\n#\ndoor-1: " + h2 + "\n", 0, 3, "already on line 1"},
		{"yaml dup hash", true, "door-1: " + h1 + "\ndoor-2: " + h1 + "\n", 0, 2, `"door-1" on line 1`},
		{"yaml short hash", true, "door-1: abcd\n", 0, 1, "64 hex"},
		{"yaml bad id", true, "door/1: " + h1 + "\n", 0, 1, "invalid device id"},
		{"plain", false, "# fleet\ndoor-1 " + h1 + "\n\tdoor-2\t" + h2 + " # spare\n", 2, 0, ""},
		{"plain three fields", false, "door-1 " + h1 + " x\n", 0, 1, "want"},
		{"plain one field", false, "door-1\n", 0, 1, "want"},
		{"plain not hex", false, "door-1 " + strings.Repeat("zz", 32) + "\n", 0, 1, "64 hex"},
		{"plain dup device", false, "door-1 " + h1 + "\ndoor-1 " + h2 + "\n", 0, 2, "already on line 1"},
		{"plain dup hash", false, "door-1 " + h1 + "\ndoor-2 " + strings.ToUpper(h1) + "\n", 0, 2, "line 1"},
		{"plain yaml syntax", false, "door-1: " + h1 + "\n", 0, 1, "looks like YAML"},
		{"long line", false, strings.Repeat("x", maxTokensLine+1), 0, 1, "longer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseTokens([]byte(tc.in), tc.yaml)
			if tc.errLine == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if s.Len() != tc.devices {
					t.Fatalf("%d devices, want %d", s.Len(), tc.devices)
				}
				return
			}
			var te *TokensError
			if !errors.As(err, &te) || !errors.Is(err, ErrTokens) {
				t.Fatalf("error %v, want a *TokensError", err)
			}
			if te.Line != tc.errLine || !strings.Contains(te.Msg, tc.errHas) {
				t.Fatalf("error %q, want line %d containing %q", err, tc.errLine, tc.errHas)
			}
			if strings.Contains(err.Error(), h1) || strings.Contains(err.Error(), h2) {
				t.Fatalf("error %q shows a hash", err)
			}
		})
	}
}

// TestTokenStoreCheck: only the device's own token passes; another
// device's token, a prefix, an empty token and an unknown device fail.
func TestTokenStoreCheck(t *testing.T) {
	s, err := parseTokens([]byte("door-1 "+hashHex("secret-1")+"\ndoor-2 "+hashHex("secret-2")+"\n"), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dev, tok string
		ok       bool
	}{
		{"door-1", "secret-1", true},
		{"door-1", "secret-2", false},
		{"door-1", "secret-", false},
		{"door-1", "", false},
		{"door-3", "secret-1", false},
		{"door-3", "", false},
	} {
		if got := s.check(tc.dev, tc.tok); got != tc.ok {
			t.Errorf("check(%q, %q) = %v, want %v", tc.dev, tc.tok, got, tc.ok)
		}
	}
	if d, ok := s.lookup("secret-2"); !ok || d != "door-2" {
		t.Errorf("lookup = %q %v", d, ok)
	}
	if _, ok := s.lookup("secret"); ok {
		t.Error("a prefix was found")
	}
}

func TestLoadTokensFormatByExtension(t *testing.T) {
	dir := t.TempDir()
	line := "door-1 " + hashHex("x") + "\n"
	for name, wantErr := range map[string]bool{"t.txt": false, "tokens": false, "t.yaml": true, "t.YML": true} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(line), 0o600)
		_, err := loadTokens(p)
		if (err != nil) != wantErr {
			t.Errorf("%s: err %v, want error %v", name, err, wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
	}
}

// writeTokens renders n devices in the YAML or line format.
func writeTokens(n int, yamlFormat bool) []byte {
	var b bytes.Buffer
	b.Grow(n * 80)
	for i := range n {
		sum := sha256.Sum256(fmt.Appendf(nil, "token-%d", i))
		if yamlFormat {
			fmt.Fprintf(&b, "door-%d: %x\n", i, sum)
		} else {
			fmt.Fprintf(&b, "door-%d %x\n", i, sum)
		}
	}
	return b.Bytes()
}

// BenchmarkTokens250k loads 250,000 devices in each format (the figure
// reported for issue 13: under 2 s).
func BenchmarkTokens250k(b *testing.B) {
	for _, yamlFormat := range []bool{true, false} {
		data := writeTokens(250_000, yamlFormat)
		b.Run(map[bool]string{true: "yaml", false: "lines"}[yamlFormat], func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			cpu0 := cpuTime()
			for b.Loop() {
				s, err := parseTokens(data, yamlFormat)
				if err != nil || s.Len() != 250_000 {
					b.Fatal(s, err)
				}
			}
			// Wall time is noisy on a shared machine; CPU time is not.
			b.ReportMetric(float64((cpuTime()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

// cpuTime is this process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// FuzzTokensFile: any input parses or fails with a *TokensError, never
// panics; what parses holds valid ids and round-trips through the line
// format.
func FuzzTokensFile(f *testing.F) {
	f.Add([]byte("door-1: "+hashHex("a")+"\n'door-2': \""+hashHex("b")+"\" # c\n"), true)
	f.Add([]byte("door-1 "+hashHex("a")+"\n# c\n\n"), false)
	f.Add([]byte("---\n{a: b}\n- x\n  y: z\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, yamlFormat bool) {
		s, err := parseTokens(data, yamlFormat)
		if err != nil {
			var te *TokensError
			if !errors.As(err, &te) || te.Line < 1 {
				t.Fatalf("error %v is not a *TokensError with a line", err)
			}
			return
		}
		var out bytes.Buffer
		for dev, e := range s.byDevice {
			if !ValidDeviceID(dev) {
				t.Fatalf("invalid id %q accepted", dev)
			}
			if s.byHash[e.hash] != dev {
				t.Fatalf("maps disagree on %q", dev)
			}
			fmt.Fprintf(&out, "%s %x\n", dev, e.hash)
		}
		s2, err := parseTokens(out.Bytes(), false)
		if err != nil || s2.Len() != s.Len() {
			t.Fatalf("round trip: %v, %d vs %d devices", err, s2.Len(), s.Len())
		}
	})
}
