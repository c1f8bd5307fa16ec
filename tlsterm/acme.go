package tlsterm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/edgeshim/edgeshim/config"
	"github.com/mholt/acmez/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// maxTrackedNames bounds the names whose expiry is exported as a metric.
const maxTrackedNames = 10000

// acmeManager obtains and renews certificates through certmagic. It owns
// its certmagic cache (and the cache's maintenance goroutine) and the
// context of every obtain and renewal, cancelled on close.
type acmeManager struct {
	cfg    config.ACME
	log    *slog.Logger
	cache  *certmagic.Cache
	magic  *certmagic.Config
	issuer *certmagic.ACMEIssuer
	alpn   *tls.Config // serves tls-alpn-01 validation handshakes; nil if disabled
	od     *onDemand
	ctx    context.Context
	cancel context.CancelFunc
	m      *acmeMetrics

	mu    sync.Mutex
	names map[string]struct{} // names whose certificates are reported
}

// newACME builds the manager; nothing is ordered before start.
func newACME(a config.ACME, listen config.Listen, dataDir string, log *slog.Logger, reg prometheus.Registerer) (*acmeManager, error) {
	log = log.With("component", "acme")
	m := &acmeManager{cfg: a, log: log, names: map[string]struct{}{}}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	storage := a.Storage
	if storage == "" {
		storage = filepath.Join(dataDir, "acme")
	}
	if err := os.MkdirAll(storage, 0o700); err != nil {
		return nil, fmt.Errorf("tls.acme.storage: %w", err)
	}
	var roots *x509.CertPool
	if a.CARoot != "" {
		pem, err := os.ReadFile(a.CARoot)
		if err != nil {
			return nil, fmt.Errorf("tls.acme.ca_root: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.acme.ca_root: no PEM certificates in %s", a.CARoot)
		}
	}
	if a.OnDemand != nil {
		od, err := newOnDemand(*a.OnDemand, log)
		if err != nil {
			return nil, err
		}
		m.od = od
	}
	zl := zapLogger(log)
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: m.configForCert,
		Logger:           zl,
	})
	cmCfg := certmagic.Config{
		Storage: &certmagic.FileStorage{Path: storage},
		Logger:  zl,
		OnEvent: m.onEvent,
		ShouldEmitFunc: func(ev string) bool {
			return ev == "cert_obtained" || ev == "cert_failed" || ev == "cached_managed_cert"
		},
	}
	if m.od != nil {
		cmCfg.OnDemand = &certmagic.OnDemandConfig{DecisionFunc: m.od.decide}
	}
	m.magic = certmagic.New(m.cache, cmCfg)
	ca := a.CA
	if ca == "" {
		ca = certmagic.LetsEncryptProductionCA
		if a.Staging {
			ca = certmagic.LetsEncryptStagingCA
		}
	}
	tmpl := certmagic.ACMEIssuer{
		CA:                      ca,
		Email:                   a.Email,
		Agreed:                  true,
		TrustedRoots:            roots,
		DisableHTTPChallenge:    !slices.Contains(a.Challenges, "http-01"),
		DisableTLSALPNChallenge: !slices.Contains(a.Challenges, "tls-alpn-01"),
		// certmagic binds its own challenge listener only if the port is
		// free; pointing it at edgeshim's listeners makes it find them in
		// use and leave the challenges to them.
		AltHTTPPort:    portOr(a.AltHTTPPort, listen.HTTP),
		AltTLSALPNPort: portOr(a.AltTLSALPNPort, listen.HTTPS),
		Logger:         zl,
	}
	if a.Staging && a.CA == "" {
		tmpl.TestCA = certmagic.LetsEncryptStagingCA
	}
	m.issuer = certmagic.NewACMEIssuer(m.magic, tmpl)
	m.magic.Issuers = []certmagic.Issuer{m.issuer}
	for _, d := range a.Domains {
		m.names[strings.ToLower(d)] = struct{}{}
	}
	m.m = newACMEMetrics(reg, m)
	return m, nil
}

// portOr returns override, or the port of a listen address ("" → 0).
func portOr(override int, addr string) int {
	if override != 0 || addr == "" {
		return override
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}

// configForCert gives each certificate the renewal window of renew_before,
// as a ratio of that certificate's own lifetime.
func (m *acmeManager) configForCert(c certmagic.Certificate) (*certmagic.Config, error) {
	rb := m.cfg.RenewBefore.D()
	if rb <= 0 || c.Leaf == nil {
		return m.magic, nil
	}
	life := c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)
	if life <= 0 {
		return m.magic, nil
	}
	cp := *m.magic
	cp.RenewalWindowRatio = min(max(float64(rb)/float64(life), 0.01), 0.99)
	return &cp, nil
}

// start manages the configured domains: each is loaded from storage or
// ordered in the background, with certmagic's retries and backoff. It must
// run after the listeners are bound, so that challenges reach them.
func (m *acmeManager) start() {
	if len(m.cfg.Domains) == 0 {
		return
	}
	if err := m.magic.ManageAsync(m.ctx, m.cfg.Domains); err != nil {
		m.log.Error("acme: managing certificates failed", "domains", m.cfg.Domains, "err", err)
	}
}

func (m *acmeManager) close() {
	m.cancel()
	m.cache.Stop()
}

// isChallengeHello reports a TLS-ALPN-01 validation handshake (RFC 8737).
func isChallengeHello(h *tls.ClientHelloInfo) bool {
	return len(h.SupportedProtos) == 1 && h.SupportedProtos[0] == acmez.ACMETLS1Protocol
}

// httpChallenge answers HTTP-01 challenges (from this replica's memory or
// from shared storage) and passes every other request to next.
func (m *acmeManager) httpChallenge(next http.Handler) http.Handler {
	return m.issuer.HTTPChallengeHandler(next)
}

func (m *acmeManager) onEvent(_ context.Context, event string, data map[string]any) error {
	id, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	switch event {
	case "cert_obtained":
		m.m.orders.WithLabelValues("ok", strconv.FormatBool(renewal)).Inc()
		m.log.Info("acme certificate obtained", "domain", id, "renewal", renewal)
		m.track(id)
	case "cert_failed":
		m.m.orders.WithLabelValues("error", strconv.FormatBool(renewal)).Inc()
		err, _ := data["error"].(error)
		m.log.Error("acme certificate failed; certmagic retries with backoff, names already held keep being served",
			"domain", id, "renewal", renewal, "err", err)
	case "cached_managed_cert":
		sans, _ := data["sans"].([]string)
		for _, s := range sans {
			m.track(s)
		}
	}
	return nil
}

func (m *acmeManager) track(name string) {
	if name == "" {
		return
	}
	m.mu.Lock()
	if len(m.names) < maxTrackedNames {
		m.names[strings.ToLower(name)] = struct{}{}
	}
	m.mu.Unlock()
}

// acmeMetrics reports orders as they end and, at scrape time, the managed
// certificates and their remaining lifetime.
type acmeMetrics struct {
	orders  *prometheus.CounterVec
	managed *prometheus.Desc
	expiry  *prometheus.Desc
	m       *acmeManager
}

func newACMEMetrics(reg prometheus.Registerer, m *acmeManager) *acmeMetrics {
	am := &acmeMetrics{
		orders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeshim_acme_orders_total",
			Help: "ACME certificate orders by result (ok, error) and whether they were renewals.",
		}, []string{"result", "renewal"}),
		managed: prometheus.NewDesc("edgeshim_acme_certificates", "ACME certificates held in memory.", nil, nil),
		expiry:  prometheus.NewDesc("edgeshim_acme_certificate_expiry_seconds", "Seconds until the ACME certificate for a name expires.", []string{"name"}, nil),
		m:       m,
	}
	reg.MustRegister(am.orders, am)
	return am
}

func (am *acmeMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- am.managed
	ch <- am.expiry
}

func (am *acmeMetrics) Collect(ch chan<- prometheus.Metric) {
	expiry, held := am.m.expiries()
	now := time.Now()
	for n, last := range expiry {
		ch <- prometheus.MustNewConstMetric(am.expiry, prometheus.GaugeValue, last.Sub(now).Seconds(), n)
	}
	ch <- prometheus.MustNewConstMetric(am.managed, prometheus.GaugeValue, float64(held))
}

// expiries returns, for each tracked name with a certificate in the cache,
// the latest expiry among its certificates, and how many distinct
// certificates are held.
func (m *acmeManager) expiries() (map[string]time.Time, int) {
	m.mu.Lock()
	names := make([]string, 0, len(m.names))
	for n := range m.names {
		names = append(names, n)
	}
	m.mu.Unlock()
	held := map[string]bool{}
	out := map[string]time.Time{}
	for _, n := range names {
		var last time.Time
		for _, c := range m.cache.AllMatchingCertificates(n) {
			if c.Leaf == nil {
				continue
			}
			held[c.Hash()] = true
			if c.Leaf.NotAfter.After(last) {
				last = c.Leaf.NotAfter
			}
		}
		if !last.IsZero() {
			out[n] = last
		}
	}
	return out, len(held)
}

// Errors of on-demand issuance decisions.
var (
	ErrNotAllowed   = errors.New("name not allowed for on-demand certificates")
	ErrOnDemandRate = errors.New("on-demand certificate rate exceeded")
)
