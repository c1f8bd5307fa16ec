package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// defaultHealthURL is the readiness endpoint of the default admin
// listener.
const defaultHealthURL = "http://127.0.0.1:9090/readyz"

// runHealth is `edgeshim health [-url URL] [-timeout D]`: exit 0 when URL
// answers 2xx within the timeout, 1 otherwise, 2 on bad arguments. It
// needs nothing but the binary, so a distroless image (no shell, no curl)
// can use it as its HEALTHCHECK.
func runHealth(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("url", defaultHealthURL, "URL that answers 2xx when edgeshim is healthy (/readyz or /healthz on the admin listener)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "edgeshim health: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	u, err := url.Parse(*target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "edgeshim health: -url must be an http:// or https:// URL with a host (got %q)\n", *target)
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "edgeshim health: -timeout must be positive (got %s)\n", *timeout)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		fmt.Fprintln(stderr, "edgeshim health:", err)
		return 2
	}
	// No proxy from the environment: the admin listener is local.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "edgeshim health: unhealthy:", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(stderr, "edgeshim health: unhealthy: %s answered %d %q\n", u.Redacted(), resp.StatusCode, strings.TrimSpace(string(body)))
		return 1
	}
	fmt.Fprintf(stdout, "healthy: %s answered %d %q\n", u.Redacted(), resp.StatusCode, strings.TrimSpace(string(body)))
	return 0
}
