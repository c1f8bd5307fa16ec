package accesslog

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLineFields(t *testing.T) {
	var buf bytes.Buffer
	l := New(Options{Writer: &buf, JSON: true, Sample: 1, ErrorSample: 1})
	rec := &Record{Start: time.Now(), Client: "192.0.2.1:5555", Proto: "HTTP/2.0", Host: "edge", Method: "GET",
		Path: "/devices/d1/commands", RawQuery: "token=SECRET&wait=30", Route: "/devices/", Bridge: "fleet"}
	l.Begin(rec)
	rec.SetTLS(&tls.ConnectionState{Version: tls.VersionTLS13, DidResume: true})
	rec.SetDevice("d1")
	rec.AddCommands(2)
	rec.SetUpstream("mqtt://127.0.0.1:1883")
	rec.Done(200, 17)
	if strings.Contains(buf.String(), "SECRET") {
		t.Fatalf("the query's token is in the line: %s", buf.String())
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	want := map[string]any{"msg": "access", "client": "192.0.2.1:5555", "tls": "1.3", "resumed": true, "proto": "HTTP/2.0",
		"route": "/devices/", "bridge": "fleet", "device": "d1", "method": "GET", "path": "/devices/d1/commands", "wait": "30",
		"status": 200.0, "bytes": 17.0, "commands": 2.0, "upstream": "mqtt://127.0.0.1:1883"}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v (%s)", k, m[k], v, buf.String())
		}
	}
	if _, ok := m["duration"].(float64); !ok {
		t.Errorf("no duration: %s", buf.String())
	}
}

func TestWaitParamOnlyNumbers(t *testing.T) {
	for q, want := range map[string]string{"wait=30": "30", "a=1&wait=5": "5", "wait=s3cret": "", "wait=": "",
		"wait=12345678": "", "token=x": "", "": "", "await=3": ""} {
		if got := waitParam(q); got != want {
			t.Errorf("waitParam(%q) = %q, want %q", q, got, want)
		}
	}
}

// TestSampling: successes at Sample, errors at ErrorSample, held sockets
// at Sample; nil loggers and records are no-ops.
func TestSampling(t *testing.T) {
	var buf bytes.Buffer
	draw := 0.5
	l := New(Options{Writer: &buf, Sample: 0.25, ErrorSample: 0.75, Rand: func() float64 { return draw }})
	count := func(code int) int {
		buf.Reset()
		rec := &Record{}
		l.Begin(rec)
		rec.Done(code, 0)
		return strings.Count(buf.String(), "msg=access")
	}
	if count(200) != 0 || count(503) != 1 {
		t.Errorf("draw 0.5: success logged %d, error %d; want 0, 1", count(200), count(503))
	}
	draw = 0.1
	if count(204) != 1 {
		t.Error("draw 0.1 under sample 0.25: not logged")
	}
	draw = 0.8
	if count(429) != 0 {
		t.Error("draw 0.8 over error_sample 0.75: logged")
	}
	draw = 0.5
	rec := &Record{}
	l.Begin(rec)
	if rec.Hold() != nil || !rec.Held() {
		t.Error("a socket not sampled is held for Finish")
	}
	var nilRec *Record
	nilRec.SetDevice("d")
	nilRec.AddCommands(1)
	nilRec.Finish(1000, "x")
	nilRec.Done(200, 0)
	var nilLog *Logger
	if nilLog.Sampled(500) {
		t.Error("a nil Logger samples")
	}
}

// BenchmarkLine is the cost of one line (JSON, to a file): what the
// access log adds to a logged request.
func BenchmarkLine(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "access.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	l := New(Options{Writer: f, JSON: true, Sample: 1, ErrorSample: 1})
	cs := &tls.ConnectionState{Version: tls.VersionTLS13}
	b.ReportAllocs()
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	for b.Loop() {
		rec := &Record{Start: time.Now(), Client: "192.0.2.1:5555", Proto: "HTTP/1.1", Host: "edge.example.com", Method: "GET",
			Path: "/devices/door-17/commands", RawQuery: "wait=30", Route: "/devices/", Bridge: "fleet", Upstream: "mqtt://127.0.0.1:1883"}
		l.Begin(rec)
		rec.SetTLS(cs)
		rec.SetDevice("door-17")
		rec.Done(204, 0)
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu-us/op")
}

// FuzzWaitParam: whatever the query, what is logged of it is empty or a
// short run of digits (never a token).
func FuzzWaitParam(f *testing.F) {
	for _, s := range []string{"wait=30", "token=x&wait=5", "wait=abc", "wait=1&wait=2", "%77ait=3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		v := waitParam(q)
		if len(v) > 6 || strings.Trim(v, "0123456789") != "" {
			t.Fatalf("waitParam(%q) = %q", q, v)
		}
	})
}
