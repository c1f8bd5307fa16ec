// Command h3load measures HTTP/3 keep-alive requests per second against
// one address: -c connections, each with -m requests in flight, for -d.
// It is the HTTP/3 load client of integration/bench_proxy.sh (there is no
// HTTP/3 load tool in Debian) and sends only to the address it is given.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go/http3"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8443", "host:port (loopback only)")
	conns := flag.Int("c", 8, "QUIC connections")
	streams := flag.Int("m", 10, "requests in flight per connection")
	dur := flag.Duration("d", 10*time.Second, "duration")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *dur)
	defer cancel()
	var n, errs atomic.Int64
	var wg sync.WaitGroup
	for range *conns {
		tr := &http3.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "localhost",
			CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}}
		defer tr.Close()
		cl := &http.Client{Transport: tr}
		for range *streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+*addr+"/", nil)
					resp, err := cl.Do(req)
					if err != nil {
						if ctx.Err() == nil {
							errs.Add(1)
						}
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == 200 {
						n.Add(1)
					} else {
						errs.Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	fmt.Printf("%.0f req/s  requests %d  errors %d\n", float64(n.Load())/dur.Seconds(), n.Load(), errs.Load())
	if n.Load() == 0 {
		os.Exit(1)
	}
}
