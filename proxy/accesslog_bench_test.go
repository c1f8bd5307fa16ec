package proxy

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/edgeshim/edgeshim/limits/accesslog"
)

// BenchmarkAccessLog measures the CPU the access log costs per request,
// off and at sample 0.1 and 1 (lines to a file), on a bridge route (a
// stand-in poll handler answering 204 over net/http, HTTP/2 clients) and
// on a proxy route served by the HTTP/1.1 fast path. cpu-us/op is the
// process's user+system CPU per request, client included (in-process).
//
//	go test -run XXX -bench AccessLog -benchtime 20000x ./proxy/
func BenchmarkAccessLog(b *testing.B) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") }))
	defer backend.Close()
	poll := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	for _, kind := range []string{"bridge-h2", "proxy-h1-fast"} {
		for _, sample := range []float64{-1, 0.1, 1} {
			name := fmt.Sprintf("%s/sample=%v", kind, sample)
			if sample < 0 {
				name = kind + "/off"
			}
			b.Run(name, func(b *testing.B) {
				mods := []func(*Options){func(o *Options) { o.Bridges = map[string]http.Handler{"fleet": poll} }}
				if sample >= 0 {
					f, err := os.Create(filepath.Join(b.TempDir(), "access.log"))
					if err != nil {
						b.Fatal(err)
					}
					defer f.Close()
					mods = append(mods, func(o *Options) {
						o.AccessLog = accesslog.New(accesslog.Options{Writer: f, JSON: true, Sample: sample, ErrorSample: 1})
					})
				}
				s, cl := startProxy(b, fmt.Sprintf(`
limits: {per_ip: {max_conns: 10000, rate: 100000, burst: 100000}}
bridges:
  fleet:
    upstream: {url: "mqtt://127.0.0.1:1"}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/devices/{device}/commands"}
    commands: {topic: "devices/{device}/commands"}
routes: [{path: /devices/, bridge: fleet}, {path: /, proxy: {backends: ["%s"], max_idle_conns: 256}}]`, backend.URL), mods...)
				url := s.url("/devices/d1/commands?wait=0")
				if kind == "proxy-h1-fast" {
					cl = h1Client(cl)
					cl.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
					url = s.url("/x")
				}
				defer cl.Transport.(*http.Transport).CloseIdleConnections()
				b.SetParallelism(8)
				cpu0 := cpuTime()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						resp, err := cl.Get(url)
						if err != nil {
							b.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				})
				b.StopTimer()
				b.ReportMetric(float64(cpuTime()-cpu0)/1e3/float64(b.N), "cpu-us/op")
			})
		}
	}
}

// cpuTime is the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
