package bridge

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// TestDrainAnswersHeldPollsKeepsSessions: Drain answers a held poll at
// once with its empty answer and Connection: close, while the session
// stays until Shutdown, which ends it; Stats count both.
func TestDrainAnswersHeldPollsKeepsSessions(t *testing.T) {
	b, srv := newEmbeddedBridge(t, nil)
	type answer struct {
		code  int
		close bool
	}
	held := make(chan answer, 1)
	go func() {
		resp, err := http.Get(srv.URL + "/devices/a/commands?wait=50")
		if err != nil {
			held <- answer{}
			return
		}
		resp.Body.Close()
		held <- answer{resp.StatusCode, resp.Close}
	}()
	for testutilGauge(b.m.held) < 1 {
		time.Sleep(10 * time.Millisecond) // the held poll has no other signal
	}
	b.Drain()
	select {
	case a := <-held:
		if a.code != 204 || !a.close {
			t.Errorf("held poll at drain: %+v, want 204 with Connection: close", a)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("held poll not answered by Drain")
	}
	b.mu.Lock()
	open := b.sessions.Len()
	b.mu.Unlock()
	if open != 1 {
		t.Errorf("sessions after Drain = %d, want 1 (they end at Shutdown)", open)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.PollsAnswered != 1 || st.SessionsEnded != 1 {
		t.Errorf("stats %+v, want 1 poll answered and 1 session ended", st)
	}
	http.DefaultClient.CloseIdleConnections()
}
