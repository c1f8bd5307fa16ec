package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/edgeshim/edgeshim/limits"
)

func TestOutPath(t *testing.T) {
	for _, tc := range []struct{ base, strip, path, want string }{
		{"", "", "/x", "/x"},
		{"/", "", "/x/", "/x/"},
		{"/base", "", "/x", "/base/x"},
		{"/base/", "", "/x", "/base/x"},
		{"/base", "", "/", "/base/"},
		{"", "/", "/x", "/x"},
		{"", "/static/", "/static/x", "/x"},
		{"", "/static/", "/static/", "/"},
		{"", "/static/", "/static", "/"},
		{"", "/api", "/api", "/"},
		{"", "/api", "/api/", "/"},
		{"", "/api", "/apix/y", "/x/y"}, // the route /api takes /apix: its prefix goes
		{"/base/", "/static/", "/static/x", "/base/x"},
		{"/base", "/api", "/api", "/base/"},
		{"/base", "/a/b/", "/a/b/c/", "/base/c/"},
		{"", "", "/x//y", "/x//y"},
		{"/base", "/api/", "/api/a%2Cb", "/base/a%2Cb"}, // an escaped path: the same
	} {
		if got := OutPath(tc.base, tc.strip, tc.path); got != tc.want {
			t.Errorf("OutPath(%q, %q, %q) = %q, want %q", tc.base, tc.strip, tc.path, got, tc.want)
		}
		// The fast path's, from bytes.
		if got := string(AppendOutPath(nil, tc.base, tc.strip, []byte(tc.path))); got != tc.want {
			t.Errorf("AppendOutPath(%q, %q, %q) = %q, want %q", tc.base, tc.strip, tc.path, got, tc.want)
		}
	}
}

func TestForwardedValues(t *testing.T) {
	v4, v6 := netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")
	for _, tc := range []struct {
		name string
		f    Forwarded[string]
		want string
	}{
		{"untrusted", Forwarded[string]{Peer: v4, Host: "h", TLS: true, XFF: []string{"1.1.1.1"}, XFH: "x", XFP: "http", Fwd: []string{"for=1.1.1.1"}},
			`192.0.2.7|h|https|for=192.0.2.7;host="h";proto=https`},
		{"trusted", Forwarded[string]{Peer: v4, Host: "h", TLS: true, Trusted: true, XFF: []string{"1.1.1.1", "2.2.2.2"}, XFH: "x", XFP: "http", Fwd: []string{"for=1.1.1.1"}},
			`1.1.1.1, 2.2.2.2, 192.0.2.7|x|http|for=1.1.1.1, for=192.0.2.7;host="h";proto=https`},
		{"trusted without values", Forwarded[string]{Peer: v4, Host: "h", Trusted: true},
			`192.0.2.7|h|http|for=192.0.2.7;host="h";proto=http`},
		{"IPv6", Forwarded[string]{Peer: v6, Host: "[::1]:8443", TLS: true},
			`2001:db8::7|[::1]:8443|https|for="[2001:db8::7]";host="[::1]:8443";proto=https`},
		{"no address", Forwarded[string]{Host: "h", TLS: true},
			`unknown|h|https|for=unknown;host="h";proto=https`},
		{"host quoted", Forwarded[string]{Peer: v4, Host: "a\"b\\c\r\nd", TLS: true},
			"192.0.2.7|a\"b\\c\r\nd|https|for=192.0.2.7;host=\"a\\\"b\\\\cd\";proto=https"},
	} {
		h := http.Header{}
		SetForwarded(h, &tc.f)
		got := strings.Join([]string{h.Get("X-Forwarded-For"), h.Get("X-Forwarded-Host"), h.Get("X-Forwarded-Proto"), h.Get("Forwarded")}, "|")
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
		if lines, want := string(asBytes(&tc.f).AppendLines(nil)), forwardedLines(h); lines != want {
			t.Errorf("%s: the fast path writes %q, net/http's path %q", tc.name, lines, want)
		}
	}
}

// asBytes is f as the fast path has it.
func asBytes(f *Forwarded[string]) *Forwarded[[]byte] {
	bs := func(ss []string) (out [][]byte) {
		for _, s := range ss {
			out = append(out, []byte(s))
		}
		return out
	}
	return &Forwarded[[]byte]{Peer: f.Peer, Host: []byte(f.Host), TLS: f.TLS, Trusted: f.Trusted,
		XFF: bs(f.XFF), XFH: []byte(f.XFH), XFP: []byte(f.XFP), Fwd: bs(f.Fwd)}
}

func forwardedLines(h http.Header) string {
	var b strings.Builder
	for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
		b.WriteString(k + ": " + h.Get(k) + "\r\n")
	}
	return b.String()
}

// FuzzForwarded: whatever a client sends, both paths write the same
// forwarded values, and the Host in Forwarded stays one quoted-string.
func FuzzForwarded(f *testing.F) {
	f.Add("front.example", "203.0.113.9", "x", "http", "for=1.2.3.4", true, true)
	f.Add("a\"b\\", "", "", "", "", false, false)
	f.Fuzz(func(t *testing.T, host, xff, xfh, xfp, fwd string, trusted, tlsOn bool) {
		fs := Forwarded[string]{Peer: netip.MustParseAddr("192.0.2.1"), Host: host, TLS: tlsOn, Trusted: trusted,
			XFF: []string{xff}, XFH: xfh, XFP: xfp, Fwd: []string{fwd}}
		h := http.Header{}
		SetForwarded(h, &fs)
		if got, want := string(asBytes(&fs).AppendLines(nil)), forwardedLines(h); got != want {
			t.Fatalf("fast path %q, net/http's path %q", got, want)
		}
		v := h.Get("Forwarded")
		prefix, suffix := "for=192.0.2.1;host=", ";proto="+fs.proto()
		if trusted {
			prefix = fwd + ", " + prefix
		}
		if !strings.HasPrefix(v, prefix) || !strings.HasSuffix(v, suffix) {
			t.Fatalf("Forwarded %q, want %q...%q", v, prefix, suffix)
		}
		q := v[len(prefix) : len(v)-len(suffix)]
		if len(q) < 2 || q[0] != '"' || q[len(q)-1] != '"' {
			t.Fatalf("host not quoted: %q", v)
		}
		for i := 1; i < len(q)-1; i++ {
			switch c := q[i]; {
			case c == '\\':
				i++ // quoted-pair
			case c == '"', c < ' ' && c != '\t', c == 0x7f:
				t.Fatalf("byte %q unescaped in the quoted host %q", c, q)
			}
		}
	})
}

func TestClassify(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	netTimeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		name  string
		err   error
		code  int
		fault bool
	}{
		{"refused", dial, 502, true},
		{"backend timeout (net)", netTimeout, 504, true},
		{"header timeout", Because(ErrHeaderTimeout, context.DeadlineExceeded), 504, true},
		{"request timeout", Because(ErrRequestTimeout, context.DeadlineExceeded), 504, false},
		{"malformed response", ErrBadResponse, 502, true},
		{"response head too large", ErrResponseHeadTooLarge, 502, true},
		{"no backend", fmt.Errorf("after 2 attempts: %w", ErrNoBackend), 503, false},
		{"client body too large", &ClientBodyError{&http.MaxBytesError{Limit: 1}}, 413, false},
		{"decompression bomb", &ClientBodyError{limits.ErrDecompressedTooLarge}, 413, false},
		{"client body unreadable", &ClientBodyError{netTimeout}, 400, false},
		{"client gone mid-body", Because(ErrClientGone, &ClientBodyError{io.ErrUnexpectedEOF}), 499, false},
		{"client gone while dialing", Because(ErrClientGone, dial), 499, false},
		{"server closing", Because(ErrAborted, dial), 502, false},
		{"cancelled by the server", context.Canceled, 502, false},
		{"other", errors.New("connection reset"), 502, true},
		{"wrapped by backend", (&Backend{Name: "b"}).Failed(netTimeout), 504, true},
	} {
		if c := Classify(tc.err); c.Code != tc.code || c.BackendFault != tc.fault {
			t.Errorf("%s: %d fault=%v, want %d fault=%v", tc.name, c.Code, c.BackendFault, tc.code, tc.fault)
		}
	}
}

func TestRetryable(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	read := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset")}
	for _, tc := range []struct {
		method  string
		body    bool
		err     error
		attempt int
		want    bool
	}{
		{"GET", false, dial, 0, true},
		{"HEAD", false, dial, 0, true},
		{"PUT", false, dial, 0, true},
		{"DELETE", false, dial, 0, true},
		{"GET", false, dial, 1, false}, // retries: 1
		{"GET", false, read, 0, false}, // the backend may have had it
		{"GET", true, dial, 0, false},  // a body is read once
		{"POST", false, dial, 0, false},
		{"PATCH", false, dial, 0, false},
	} {
		if got := retryable(tc.err, Idempotent(tc.method, tc.body), tc.attempt, 1); got != tc.want {
			t.Errorf("%s body=%v %v attempt %d: %v, want %v", tc.method, tc.body, tc.err, tc.attempt, got, tc.want)
		}
		if got := retryable(tc.err, Idempotent([]byte(tc.method), tc.body), tc.attempt, 1); got != tc.want {
			t.Errorf("%s as bytes: %v, want %v", tc.method, got, tc.want)
		}
	}
	for m, want := range map[string]bool{"GET": true, "HEAD": true, "OPTIONS": true, "TRACE": true, "PUT": false, "POST": false} {
		if Replayable(m, false) != want || Replayable(m, true) {
			t.Errorf("replayable %s: want %v without a body, false with one", m, want)
		}
	}
}
