package upstream

import (
	"errors"
	"net/url"
	"testing"
	"testing/synctest"
	"time"
)

func mustURLs(t *testing.T, ss ...string) []*url.URL {
	var out []*url.URL
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

func TestPoolPolicies(t *testing.T) {
	urls := mustURLs(t, "http://a", "http://b", "http://c")
	rr := NewPool(urls, "round_robin", 3, time.Second, time.Now)
	var got []string
	for range 6 {
		b, _ := rr.pick(nil)
		got = append(got, b.URL.Host)
	}
	if want := "a b c a b c"; join(got) != want {
		t.Errorf("round_robin = %q, want %q", join(got), want)
	}
	first := NewPool(urls, "first", 3, time.Second, time.Now)
	for range 3 {
		if b, _ := first.pick(nil); b.URL.Host != "a" {
			t.Errorf("first picked %s", b.URL.Host)
		}
	}
	lc := NewPool(urls, "least_conn", 3, time.Second, time.Now)
	lc.backends[0].inflight.Store(5)
	lc.backends[1].inflight.Store(1)
	lc.backends[2].inflight.Store(3)
	if b, _ := lc.pick(nil); b.URL.Host != "b" {
		t.Errorf("least_conn picked %s, want b", b.URL.Host)
	}
	if b, _ := lc.pick([]*Backend{lc.backends[1]}); b.URL.Host != "c" {
		t.Errorf("least_conn excluding b picked %s, want c", b.URL.Host)
	}
}

func join(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += " "
		}
		out += s
	}
	return out
}

// TestPoolEjectionAndRecovery: maxFails consecutive failures eject a
// backend for ejectFor; it is picked again once that has passed.
func TestPoolEjectionAndRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := NewPool(mustURLs(t, "http://a", "http://b"), "first", 2, 30*time.Second, time.Now)
		var events []bool
		p.OnHealth = func(_ *Backend, h bool) { events = append(events, h) }
		a := p.backends[0]
		p.failure(a)
		if b, _ := p.pick(nil); b != a {
			t.Fatal("one failure must not eject")
		}
		p.failure(a)
		if b, _ := p.pick(nil); b == a {
			t.Fatal("two consecutive failures must eject")
		}
		time.Sleep(29 * time.Second)
		if b, _ := p.pick(nil); b == a {
			t.Fatal("ejected backend picked before eject_for passed")
		}
		time.Sleep(time.Second)
		if b, _ := p.pick(nil); b != a {
			t.Fatal("backend not picked again after eject_for")
		}
		p.Success(a)
		if len(events) != 2 || events[0] || !events[1] {
			t.Errorf("health events = %v, want [false true]", events)
		}
		p.failure(p.backends[1])
		p.failure(p.backends[1])
		p.failure(a)
		p.failure(a)
		if _, err := p.pick(nil); !errors.Is(err, ErrNoBackend) {
			t.Errorf("all ejected: err = %v, want ErrNoBackend", err)
		}
	})
}
