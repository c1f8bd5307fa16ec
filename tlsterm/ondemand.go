package tlsterm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"golang.org/x/time/rate"
)

// askTimeout bounds one on-demand "ask" request.
const askTimeout = 5 * time.Second

// onDemand decides whether a name seen in a handshake may get a
// certificate: it must be a valid DNS name, match an allow pattern or be
// approved by the ask endpoint, and fit the order rate.
type onDemand struct {
	allow  [][]string // patterns split into labels
	ask    *url.URL
	client *http.Client
	lim    *rate.Limiter
	log    *slog.Logger
}

func newOnDemand(c config.OnDemand, log *slog.Logger) (*onDemand, error) {
	o := &onDemand{
		lim:    rate.NewLimiter(rate.Limit(c.Rate/60), c.Burst),
		log:    log,
		client: &http.Client{Timeout: askTimeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
	for i, p := range c.Allow {
		p = strings.ToLower(strings.TrimSuffix(p, "."))
		labels := strings.Split(p, ".")
		for _, l := range labels {
			if _, err := path.Match(l, ""); err != nil || l == "" {
				return nil, fmt.Errorf("tls.acme.on_demand.allow[%d]: bad pattern %q", i, c.Allow[i])
			}
		}
		o.allow = append(o.allow, labels)
	}
	if c.Ask != "" {
		u, err := url.Parse(c.Ask)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("tls.acme.on_demand.ask: want an http(s) URL (got %q)", c.Ask)
		}
		o.ask = u
	}
	return o, nil
}

// decide is certmagic's OnDemand.DecisionFunc. It runs only for names
// that have no certificate in memory.
func (o *onDemand) decide(ctx context.Context, name string) error {
	name = strings.ToLower(name)
	if !validName(name) {
		return fmt.Errorf("%w: %q is not a DNS name", ErrNotAllowed, name)
	}
	ok := o.allowed(name)
	if !ok && o.ask != nil {
		var err error
		if ok, err = o.asked(ctx, name); err != nil {
			o.log.Warn("acme on-demand ask failed", "domain", name, "err", err)
			return fmt.Errorf("%w: ask: %w", ErrNotAllowed, err)
		}
	}
	if !ok {
		o.log.Debug("acme on-demand refused", "domain", name)
		return fmt.Errorf("%w: %s", ErrNotAllowed, name)
	}
	if !o.lim.Allow() {
		o.log.Warn("acme on-demand rate exceeded", "domain", name)
		return ErrOnDemandRate
	}
	return nil
}

// allowed matches name label by label: "*" or "device-*" match within one
// label only, so "*.example.com" does not allow "a.b.example.com".
func (o *onDemand) allowed(name string) bool {
	labels := strings.Split(name, ".")
	for _, p := range o.allow {
		if len(p) != len(labels) {
			continue
		}
		match := true
		for i := range p {
			if ok, _ := path.Match(p[i], labels[i]); !ok {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

// asked asks the operator's endpoint: GET ask?domain=name, 2xx allows.
func (o *onDemand) asked(ctx context.Context, name string) (bool, error) {
	u := *o.ask
	q := u.Query()
	q.Set("domain", name)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return false, err
	}
	resp, err := o.client.Do(req)
	if err != nil {
		return false, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300, nil
}

// validName accepts lowercase DNS names of letters, digits and hyphens
// (RFC 1123 labels), at most 253 characters.
func validName(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	for l := range strings.SplitSeq(n, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
