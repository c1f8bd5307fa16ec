// Command tlsload measures requests per second and latency when every
// request uses a new TLS connection, resumed from a shared session cache
// (a polling device that reconnects for each poll). It is the load client
// of integration/bench_proxy.sh and sends only to the address it is given.
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8443", "host:port (loopback only)")
	conc := flag.Int("c", 32, "concurrent clients")
	dur := flag.Duration("d", 10*time.Second, "duration")
	pq := flag.Bool("pq", false, "offer X25519MLKEM768 (Go's default); off, offer X25519 and P-256 only, as devices and OpenSSL 3.0 clients do, so every proxy does the same key exchange")
	tls12 := flag.Bool("tls12", false, "offer TLS 1.2 only (resumption without a key exchange, as most legacy devices)")
	flag.Parse()
	cache := tls.NewLRUClientSessionCache(1024)
	cfg := &tls.Config{InsecureSkipVerify: true, ClientSessionCache: cache, ServerName: "localhost", NextProtos: []string{"http/1.1"}}
	if *tls12 {
		cfg.MaxVersion = tls.VersionTLS12
	}
	if !*pq {
		cfg.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	}
	var n, resumed, errs atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	stop := time.Now().Add(*dur)
	var wg sync.WaitGroup
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(stop) {
				start := time.Now()
				c, err := tls.Dial("tcp", *addr, cfg)
				if err != nil {
					errs.Add(1)
					continue
				}
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if c.ConnectionState().DidResume {
					resumed.Add(1)
				}
				c.Close()
				if err != nil || resp.StatusCode != 200 {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(start))
				n.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p99 := time.Duration(0)
	if len(lat) > 0 {
		p99 = lat[len(lat)*99/100]
	}
	fmt.Printf("%.0f req/s  p99 %s  resumed %.1f%%  errors %d\n",
		float64(n.Load())/dur.Seconds(), p99.Round(10*time.Microsecond), 100*float64(resumed.Load())/float64(max(n.Load(), 1)), errs.Load())
	if n.Load() == 0 {
		os.Exit(1)
	}
}
