package tlsterm

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/edgeshim/edgeshim/config"
)

func TestOnDemandAllow(t *testing.T) {
	o, err := newOnDemand(config.OnDemand{Allow: []string{"device-*.fleet.example", "*.example.com", "edge.example.org."}, Rate: 6000, Burst: 100}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"device-42.fleet.example":    true,
		"DEVICE-42.fleet.example":    true,
		"sensor-1.fleet.example":     false,
		"a.example.com":              true,
		"a.b.example.com":            false, // a wildcard spans one label
		"example.com":                false,
		"edge.example.org":           true,
		"evil.com":                   false,
		"device-..fleet.example":     false,
		"device-a_b.fleet.example":   false,
		"":                           false,
		"device-x.fleet.example\x00": false,
	} {
		err := o.decide(context.Background(), name)
		if got := err == nil; got != want {
			t.Errorf("decide(%q) = %v, want allowed=%v", name, err, want)
		}
		if err != nil && !errors.Is(err, ErrNotAllowed) {
			t.Errorf("decide(%q) error %v is not ErrNotAllowed", name, err)
		}
	}
}

func TestOnDemandAskAndRate(t *testing.T) {
	var asked atomic.Int32
	ask := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if r.URL.Query().Get("domain") == "ok.example" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusForbidden)
	}))
	defer ask.Close()
	o, err := newOnDemand(config.OnDemand{Ask: ask.URL + "/check?token=x", Rate: 1, Burst: 1}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := o.decide(context.Background(), "no.example"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("refused by ask: %v, want ErrNotAllowed", err)
	}
	if err := o.decide(context.Background(), "ok.example"); err != nil {
		t.Errorf("approved by ask: %v", err)
	}
	// The burst of 1 is spent: the next approved name waits for the rate.
	if err := o.decide(context.Background(), "ok.example"); !errors.Is(err, ErrOnDemandRate) {
		t.Errorf("over the rate: %v, want ErrOnDemandRate", err)
	}
	// An invalid name never reaches the ask endpoint.
	n := asked.Load()
	if err := o.decide(context.Background(), "bad name&x=1"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("bad name: %v", err)
	}
	if asked.Load() != n {
		t.Error("an invalid name was sent to the ask endpoint")
	}
}

func TestOnDemandBadConfig(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, c := range []config.OnDemand{
		{Allow: []string{"[.example.com"}},
		{Allow: []string{"a..example.com"}},
		{Ask: "ftp://x/ask"},
		{Ask: "/relative"},
	} {
		if _, err := newOnDemand(c, log); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// FuzzOnDemandName checks that whatever SNI a client sends, a name is only
// allowed if it is a valid DNS name matching a pattern.
func FuzzOnDemandName(f *testing.F) {
	o, err := newOnDemand(config.OnDemand{Allow: []string{"device-*.fleet.example"}, Rate: 1e9, Burst: 1 << 30}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"device-1.fleet.example", "x", "device-*.fleet.example", "..", strings.Repeat("a.", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if o.decide(context.Background(), name) == nil {
			l := strings.ToLower(name)
			if !validName(l) || !strings.HasPrefix(l, "device-") || !strings.HasSuffix(l, ".fleet.example") || strings.Count(l, ".") != 2 {
				t.Fatalf("allowed %q", name)
			}
		}
	})
}
