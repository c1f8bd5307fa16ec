package sim

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// serverSample is the server's cumulative CPU seconds and its resident
// memory at one time.
type serverSample struct {
	at     time.Time
	cpu    float64 // cumulative, across restarts
	rss    float64 // bytes
	ok     bool
	source string
}

// sampler reads the server's CPU and memory once a second, from
// /proc/PID or from a Prometheus /metrics URL, and accumulates CPU across
// restarts (a counter that went down started again from zero).
type sampler struct {
	pid     int
	metrics string
	client  *http.Client
	clkTck  float64

	mu       sync.Mutex
	last     serverSample
	lastRaw  float64
	cpuTotal float64
}

func newSampler(pid int, metricsURL string) *sampler {
	if pid == 0 && metricsURL == "" {
		return nil
	}
	return &sampler{pid: pid, metrics: metricsURL, client: &http.Client{Timeout: 2 * time.Second}, clkTck: 100}
}

// read returns the raw cumulative CPU seconds and RSS bytes.
func (s *sampler) read(ctx context.Context) (cpu, rss float64, source string, err error) {
	if s.pid > 0 {
		// The process and its descendants, summed: Pushpin's runner
		// starts condure, pushpin-proxy and pushpin-handler.
		source = fmt.Sprintf("/proc/%d", s.pid)
		for _, pid := range processTree(s.pid) {
			c, r, err := s.readProc(pid)
			if err != nil {
				if pid == s.pid {
					return 0, 0, source, err
				}
				continue // a child that just exited
			}
			cpu += c
			rss += r
		}
		return cpu, rss, source, nil
	}
	source = s.metrics
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.metrics, nil)
	if err != nil {
		return 0, 0, source, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, 0, source, err
	}
	defer resp.Body.Close()
	vals := scrape(io.LimitReader(resp.Body, 16<<20), "process_cpu_seconds_total", "process_resident_memory_bytes")
	return vals[0], vals[1], source, nil
}

// readProc returns one process's CPU seconds and RSS bytes.
func (s *sampler) readProc(pid int) (cpu, rss float64, err error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name, which is in parentheses.
	i := strings.LastIndexByte(string(stat), ')')
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("short /proc stat")
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			if ff := strings.Fields(line); len(ff) >= 2 {
				kb, _ := strconv.ParseFloat(ff[1], 64)
				rss = kb * 1024
			}
		}
	}
	return (ut + st) / s.clkTck, rss, nil
}

// processTree is pid and its descendants, from /proc/PID/task/*/children
// (bounded: at most 256 processes).
func processTree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out) && len(out) < 256; i++ {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", out[i]))
		for _, t := range tasks {
			data, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(data)) {
				if c, err := strconv.Atoi(f); err == nil && c > 0 {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// scrape returns the value of each unlabelled metric in Prometheus text.
func scrape(r io.Reader, names ...string) []float64 {
	out := make([]float64, len(names))
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for i, n := range names {
			if rest, ok := strings.CutPrefix(line, n+" "); ok {
				out[i], _ = strconv.ParseFloat(strings.TrimSpace(rest), 64)
			}
		}
	}
	return out
}

// sample reads once and updates the accumulated CPU.
func (s *sampler) sample(ctx context.Context) serverSample {
	cpu, rss, src, err := s.read(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		return s.last // the server may be restarting: keep the last
	}
	if cpu >= s.lastRaw {
		s.cpuTotal += cpu - s.lastRaw
	} else {
		s.cpuTotal += cpu // restarted
	}
	s.lastRaw = cpu
	s.last = serverSample{at: time.Now(), cpu: s.cpuTotal, rss: rss, ok: true, source: src}
	return s.last
}

// run samples once a second until ctx ends.
func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sample(ctx)
		}
	}
}
