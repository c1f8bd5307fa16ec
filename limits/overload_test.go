package limits

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestFitDescriptors: caps above what RLIMIT_NOFILE allows are lowered
// (about two descriptors per connection, sessions in the other half,
// twice as dear with the embedded broker); caps within it stay.
func TestFitDescriptors(t *testing.T) {
	base := func() *config.Config {
		return (&config.Config{Bridges: map[string]config.Bridge{"a": {}, "b": {}}}).WithDefaults()
	}
	c := base()
	warns := FitDescriptors(c, 20000)
	// reserve 64+400: 19536 left; half to connections.
	if *c.Limits.MaxConns != 9768 || *c.Limits.PerIP.MaxConns != 200 {
		t.Errorf("max_conns %d per_ip %d, want 9768 and 200", *c.Limits.MaxConns, *c.Limits.PerIP.MaxConns)
	}
	if got := c.Bridges["a"].Session.Max + c.Bridges["b"].Session.Max; got > 19536-9768 || got < 19536-9768-2 {
		t.Errorf("sessions %d, want the other half (%d)", got, 19536-9768)
	}
	if len(warns) != 3 || !strings.Contains(warns[0], "limits.max_conns lowered from 50000 to 9768") {
		t.Errorf("warnings: %q", warns)
	}
	c = base()
	c.EmbeddedBroker.Enabled = true
	FitDescriptors(c, 20000)
	if got := c.Bridges["a"].Session.Max + c.Bridges["b"].Session.Max; got > (19536-9768)/2 {
		t.Errorf("sessions with the embedded broker %d, want at most %d", got, (19536-9768)/2)
	}
	c = base()
	thousand := 1000
	c.Limits.MaxConns = &thousand
	c.Bridges = map[string]config.Bridge{"a": {Session: config.Session{Max: 1000}}}
	if w := FitDescriptors(c, 20000); len(w) != 0 || *c.Limits.MaxConns != 1000 || c.Bridges["a"].Session.Max != 1000 {
		t.Errorf("caps within the limit changed: %q %d", w, *c.Limits.MaxConns)
	}
	c = base()
	zero := 0
	c.Limits.MaxConns = &zero // off: the descriptor limit caps it all the same
	if FitDescriptors(c, 20000); *c.Limits.MaxConns != 9768 {
		t.Errorf("max_conns 0 (no cap) with 20000 descriptors: %d, want 9768", *c.Limits.MaxConns)
	}
	if SoftConns(0, 1000) != 900 || SoftConns(500, 1000) != 500 || SoftConns(2000, 1000) != 900 {
		t.Error("SoftConns")
	}
}

// TestOverflowMarkAndGuard: a connection accepted above the soft cap is
// marked (seen through tls.Conn's NetConn), and the guard answers its
// requests 503 with Retry-After and Connection: close.
func TestOverflowMarkAndGuard(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(ln, ListenerOptions{MaxConns: 10, SoftConns: 1, PerIPMaxConns: 10, PerIPRate: 100, PerIPBurst: 100, Tracked: 10})
	defer l.Close()
	var clients []net.Conn
	var marks []bool
	for range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		marks = append(marks, Overflowed(tls.Server(s, &tls.Config{})))
	}
	for _, c := range clients {
		c.Close()
	}
	if marks[0] || !marks[1] {
		t.Fatalf("overflow marks %v, want [false true]", marks)
	}
	n := 0
	h := OverflowGuard(RetryAfter{Min: 5 * time.Second, Max: 9 * time.Second}, func(*http.Request) bool { return true }, func() { n++ },
		http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("overflowed request reached the handler") }))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != 503 || rec.Header().Get("Retry-After") == "" || rec.Header().Get("Connection") != "close" || n != 1 {
		t.Errorf("guard: %d %v counted %d", rec.Code, rec.Header(), n)
	}
}

type emfileListener struct{ net.Listener }

func (emfileListener) Accept() (net.Conn, error) {
	return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
}

// TestAcceptErrorsCounted: EMFILE is counted by kind and returned for the
// caller's backoff.
func TestAcceptErrorsCounted(t *testing.T) {
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"reason"})
	l := NewListener(emfileListener{}, ListenerOptions{MaxConns: 1, PerIPRate: 1, PerIPBurst: 1, Tracked: 1, AcceptErrors: errs})
	if _, err := l.Accept(); err == nil {
		t.Fatal("no error")
	}
	if got := testutil.ToFloat64(errs.WithLabelValues("emfile")); got != 1 {
		t.Errorf("emfile count %v, want 1", got)
	}
}
