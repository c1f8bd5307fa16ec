package integration

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestOverloadAnsweredNotDropped: under a descriptor limit of 300,
// edgeshim fits max_conns to it (115) and answers connections above the
// soft cap (90%) 503 with Retry-After; a burst of 112 long-polls on new
// connections gets every connection an HTTP answer (no reset, no EMFILE)
// and every poll admitted is answered in full.
func TestOverloadAnsweredNotDropped(t *testing.T) {
	prlimit := requireTool(t, "prlimit")
	m := startMosquitto(t, "")
	e := startEdgeshim(t, bridgeConfig(m.URL(), "", ""), EdgeOptions{Prefix: []string{prlimit, "--nofile=300:300"}})
	caps := e.Logs.waitLine(t, regexp.MustCompile(`connection caps.* nofile=300 max_conns=(\d+) overload_from=(\d+)`), 5*time.Second)
	hard, _ := strconv.Atoi(caps[1])
	soft, _ := strconv.Atoi(caps[2])
	if hard != 115 || soft != 104 {
		t.Fatalf("caps %d/%d, want max_conns 115 (fitted to 300 descriptors) and soft 104", hard, soft)
	}
	e.Logs.waitLine(t, regexp.MustCompile(`limits.max_conns lowered from 10000 to 115`), time.Second)

	const n = 112 // above the soft cap, within the hard one
	tr := &http.Transport{TLSClientConfig: e.TLSConfig(), TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
		DisableKeepAlives: true, MaxConnsPerHost: 0}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	var wg sync.WaitGroup
	type result struct {
		code  int
		retry string
		err   error
	}
	res := make([]result, n)
	for i := range n {
		wg.Go(func() {
			resp, err := c.Get(e.URL(fmt.Sprintf("/devices/o%d/commands?wait=5", i)))
			if err != nil {
				res[i].err = err
				return
			}
			resp.Body.Close()
			res[i] = result{code: resp.StatusCode, retry: resp.Header.Get("Retry-After")}
		})
	}
	wg.Wait()
	held, refused := 0, 0
	for i, r := range res {
		switch {
		case r.err != nil:
			t.Errorf("poll %d: %v (want an HTTP answer, never a reset)", i, r.err)
		case r.code == 204:
			held++
		case r.code == 503:
			if s, err := strconv.Atoi(r.retry); err != nil || s < 1 {
				t.Errorf("poll %d: 503 with Retry-After %q", i, r.retry)
			}
			refused++
		default:
			t.Errorf("poll %d: status %d", i, r.code)
		}
	}
	t.Logf("%d polls held and answered, %d answered 503", held, refused)
	if refused == 0 || held < soft-5 {
		t.Errorf("held %d, refused %d: want about %d held and the rest 503", held, refused, soft)
	}
	if got := e.Metric("edgeshim_overload_answered_total"); int(got) != refused {
		t.Errorf("overload answered metric = %v, want %d", got, refused)
	}
	if got := e.Metric("edgeshim_accept_errors_total"); got != 0 {
		t.Errorf("accept errors = %v, want 0 (no EMFILE)", got)
	}
}
