package bridge

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/bridge/longpoll"
	"github.com/edgeshim/edgeshim/limits/accesslog"
)

// TestHeldPollKeepsNothingOfTheRequest: a poll held through StartPoll
// (the fast path's parked poll) keeps neither the request's header map
// nor its TLS state, which would stay live for the whole wait (issue 14).
func TestHeldPollKeepsNothingOfTheRequest(t *testing.T) {
	b, _ := newEmbeddedBridge(t, nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	req := &longpoll.Request{Path: "/devices/a/commands", RawQuery: "wait=30",
		Header: http.Header{"Prefer": {"wait=30"}, "X-Other": {"x"}}, RemoteAddr: "127.0.0.1:1",
		TLS: &tls.ConnectionState{}, Record: &accesslog.Record{}}
	lp, ok := b.StartPoll(req)
	if !ok {
		t.Fatal("StartPoll did not take the poll")
	}
	p, isPoll := lp.(*poll)
	if !isPoll {
		t.Fatalf("StartPoll answered at once: %+v", lp)
	}
	defer p.Cancel()
	if p.wait <= 0 {
		t.Errorf("wait = %v, want the request's 30s", p.wait)
	}
	if p.req.cred.Header != nil || p.req.cred.TLS != nil {
		t.Errorf("held poll keeps the request's header (%v) or TLS state (%v)", p.req.cred.Header, p.req.cred.TLS)
	}
}
