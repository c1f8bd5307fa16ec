package limits

import (
	"net/netip"
	"testing"
	"time"
)

// TestSetPerIPLive: lowered per-IP caps apply to the next connection of an
// IP that already has state (its limiter is retuned), raised ones too.
func TestSetPerIPLive(t *testing.T) {
	now := time.Unix(1000, 0)
	l := NewListener(nil, ListenerOptions{MaxConns: 100, PerIPMaxConns: 10, PerIPRate: 1, PerIPBurst: 10, Tracked: 10,
		Now: func() time.Time { return now }})
	ip := netip.MustParseAddr("127.0.0.7")
	var releases []func()
	for range 3 {
		r, ok := l.Admit(ip)
		if !ok {
			t.Fatal("refused under the start caps")
		}
		releases = append(releases, r)
	}
	l.SetPerIP(PerIP{MaxConns: 3, Rate: 1, Burst: 10})
	if _, ok := l.Admit(ip); ok {
		t.Fatal("a 4th connection admitted after per-IP max_conns was lowered to 3")
	}
	releases[0]()
	l.SetPerIP(PerIP{MaxConns: 10, Rate: 1, Burst: 1})
	if _, ok := l.Admit(ip); !ok {
		t.Fatal("refused within a burst of 1")
	}
	if _, ok := l.Admit(ip); ok {
		t.Fatal("admitted beyond a burst lowered to 1 (the limiter was not retuned)")
	}
	// A raised rate refills from the IP's next connection on.
	l.SetPerIP(PerIP{MaxConns: 10, Rate: 1000, Burst: 1000})
	l.Admit(ip)
	now = now.Add(10 * time.Millisecond)
	for i := range 5 {
		if _, ok := l.Admit(ip); !ok {
			t.Fatalf("connection %d refused 10ms after the rate was raised to 1000/s", i)
		}
	}
}

func TestAdmissionSetRate(t *testing.T) {
	a := NewAdmission(AdmissionOptions{Rate: 1, Burst: 1, MaxQueue: 1})
	a.SetRate(50, 7)
	if a.lim.Burst() != 7 || a.lim.Limit() != 50 {
		t.Fatalf("limiter %v/%d, want 50/7", a.lim.Limit(), a.lim.Burst())
	}
}
