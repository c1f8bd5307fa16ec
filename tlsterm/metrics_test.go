package tlsterm

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// writeCert writes a certificate for hosts, issued at issued (valid 365
// days), and returns its file pair.
func writeCert(t *testing.T, dir, file string, hosts []string, issued time.Time) config.CertFile {
	t.Helper()
	c, k, err := makeSelfSigned(hosts, issued)
	if err != nil {
		t.Fatal(err)
	}
	cf := config.CertFile{Cert: filepath.Join(dir, file+".pem"), Key: filepath.Join(dir, file+"-key.pem")}
	if err := os.WriteFile(cf.Cert, c, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cf.Key, k, 0o600); err != nil {
		t.Fatal(err)
	}
	return cf
}

// TestCertificateExpiryFiles: every certificate file is reported by its
// first name with source "file"; of two sharing a name, the one expiring
// first; seconds are counted from the collector's clock.
func TestCertificateExpiryFiles(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tc := config.TLS{Certs: []config.CertFile{
		writeCert(t, dir, "a", []string{"edge.example.com", "other.example.com"}, now),
		writeCert(t, dir, "b", []string{"10.0.0.1"}, now.Add(-300*24*time.Hour)),
		writeCert(t, dir, "c", []string{"edge.example.com"}, now.Add(-100*24*time.Hour)),
	}}
	term := newTerm(t, tc)
	ce := newCertExpiry(term, func() time.Time { return now })
	day := 24 * 3600
	want := `
# HELP edgeshim_certificate_expiry_seconds Seconds until a served certificate expires (negative: expired), by name and source (file, self_signed, acme).
# TYPE edgeshim_certificate_expiry_seconds gauge
edgeshim_certificate_expiry_seconds{name="10.0.0.1",source="file"} ` + strconv.Itoa(65*day) + `
edgeshim_certificate_expiry_seconds{name="edge.example.com",source="file"} ` + strconv.Itoa(265*day) + `
`
	if err := testutil.CollectAndCompare(ce, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// TestCertificateExpirySelfSigned: the development certificate is reported
// with source "self_signed", and the collector is registered by New.
func TestCertificateExpirySelfSigned(t *testing.T) {
	reg := prometheus.NewRegistry()
	term, err := New(Options{DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: reg,
		TLS: (&config.Config{}).WithDefaults().TLS})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "edgeshim_certificate_expiry_seconds" {
			continue
		}
		if len(mf.Metric) != 1 {
			t.Fatalf("%d series, want 1", len(mf.Metric))
		}
		m := mf.Metric[0]
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["name"] != "localhost" || labels["source"] != "self_signed" {
			t.Errorf("labels %v, want name=localhost source=self_signed", labels)
		}
		if v := m.GetGauge().GetValue(); v < 364*24*3600 || v > 366*24*3600 {
			t.Errorf("expiry %v s, want about 365 days", v)
		}
		return
	}
	t.Fatal("edgeshim_certificate_expiry_seconds not registered")
}
