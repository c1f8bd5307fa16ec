package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHealthCommand(t *testing.T) {
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte("ready\n"))
	}))
	defer ready.Close()
	draining := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	defer draining.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/readyz"
	ln.Close()

	for _, tc := range []struct {
		name string
		args []string
		code int
		out  string
	}{
		{"ready", []string{"-url", ready.URL + "/readyz"}, 0, `answered 200 "ready"`},
		{"not found", []string{"-url", ready.URL + "/nope"}, 1, "answered 404"},
		{"draining", []string{"-url", draining.URL + "/readyz"}, 1, `answered 503 "not ready"`},
		{"nothing listening", []string{"-url", closed}, 1, "unhealthy"},
		{"bad url", []string{"-url", "127.0.0.1:9090/readyz"}, 2, "must be an http:// or https:// URL"},
		{"bad timeout", []string{"-timeout", "0s"}, 2, "-timeout must be positive"},
		{"extra argument", []string{"now"}, 2, `unexpected argument "now"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(append([]string{"health"}, tc.args...), &out, &errb)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stdout %q, stderr %q)", code, tc.code, out.String(), errb.String())
			}
			if !strings.Contains(out.String()+errb.String(), tc.out) {
				t.Errorf("output %q, want it to contain %q", out.String()+errb.String(), tc.out)
			}
		})
	}
}

func TestBuildInfo(t *testing.T) {
	old := version
	version = "v1.2.3-test"
	defer func() { version = old }()
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 || out.String() != "edgeshim v1.2.3-test\n" {
		t.Errorf("version: exit %d, %q", code, out.String())
	}
	reg := prometheus.NewRegistry()
	registerBuildInfo(reg)
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].Metric) != 1 {
		t.Fatalf("gather: %v %v", mfs, err)
	}
	labels := map[string]string{}
	for _, l := range mfs[0].Metric[0].Label {
		labels[l.GetName()] = l.GetValue()
	}
	if mfs[0].GetName() != "edgeshim_build_info" || labels["version"] != "v1.2.3-test" || !strings.HasPrefix(labels["goversion"], "go") {
		t.Errorf("got %s %v", mfs[0].GetName(), labels)
	}
	if v := mfs[0].Metric[0].GetGauge().GetValue(); v != 1 {
		t.Errorf("value %v, want 1", v)
	}
}
