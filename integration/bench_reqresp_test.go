package integration

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"testing"
	"time"
)

// BenchmarkRequestResponse: one requester and one long-polling device
// (keep-alive HTTPS); each op is a full round trip: publish a request with
// a Response Topic → the device's poll returns it → the device POSTs its
// answer → the answer arrives at the requester with its correlation data.
// It reports the round trip (ns/op) and edgeshim's CPU per request.
//
//	go test -run XXX -bench RequestResponse -benchtime 500x ./integration/
func BenchmarkRequestResponse(b *testing.B) {
	m := startMosquitto(b, "set_tcp_nodelay true\n")
	app := newMQTTPeer(b, m.Addr(), "bench-rr", true)
	status := app.subscribe("devices/rr/status")
	replies := app.subscribe("replies/#")
	e := startEdgeshim(b, reqrespConfig(m.URL(), "30s", ""))
	c := e.Client()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the device: poll, answer, repeat
		defer wg.Done()
		for ctx.Err() == nil {
			req, _ := http.NewRequestWithContext(ctx, "GET", e.URL("/devices/rr/commands?wait=25"), nil)
			resp, err := c.Do(req)
			if err != nil {
				time.Sleep(10 * time.Millisecond) // backoff, not a wait for an event
				continue
			}
			var body bytes.Buffer
			body.ReadFrom(resp.Body)
			resp.Body.Close()
			id := resp.Header.Get("X-Command-Id")
			if resp.StatusCode != 200 || id == "" {
				continue
			}
			req, _ = http.NewRequestWithContext(ctx, "POST", e.URL("/devices/rr/commands/"+id+"/response"), &body)
			if resp, err := c.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}()
	defer func() { cancel(); wg.Wait() }()
	await(b, status, "online", 10*time.Second)
	cpu0 := procCPU(b, e.cmd.Process.Pid)
	corr := []byte("c")
	for b.Loop() {
		app.request("devices/rr/commands", corr, "replies/rr", corr, 0)
		select {
		case r := <-replies:
			if !bytes.Equal(r.Properties.CorrelationData, corr) {
				b.Fatalf("answer %+v", r.Properties)
			}
		case <-time.After(10 * time.Second):
			b.Fatal("no answer")
		}
	}
	b.ReportMetric(float64(procCPU(b, e.cmd.Process.Pid)-cpu0)/float64(b.N)/1e3, "edgeshim-cpu-µs/op")
}
