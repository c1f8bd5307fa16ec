package config

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

const presenceDoc = `bridges:
  b:
    upstream: {url: "mqtt://127.0.0.1:1883", session_expiry: 10m}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/d/{device}"}
    commands: {topic: "d/{device}/c"}
    presence: {topic: "d/{device}/s"%s}
`

// TestPresenceWillDelay: default 2m; 0 is kept (will at once); longer than
// the session expiry is refused with its field path.
func TestPresenceWillDelay(t *testing.T) {
	c, err := Parse([]byte(fmt.Sprintf(presenceDoc, "")), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.WithDefaults().Bridges["b"].Presence.WillDelay; got == nil || got.D() != 2*time.Minute {
		t.Errorf("default will_delay = %v, want 2m", got)
	}
	c, err = Parse([]byte(fmt.Sprintf(presenceDoc, ", will_delay: 0s")), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.WithDefaults().Bridges["b"].Presence.WillDelay; got == nil || *got != 0 {
		t.Errorf("will_delay 0s became %v", got)
	}
	want := "bridges.b.presence.will_delay: must be at most upstream.session_expiry (11m0s > 10m0s): the broker sends the will when the session expires"
	if got := problems(t, fmt.Sprintf(presenceDoc, ", will_delay: 11m")); !slices.Contains(got, want) {
		t.Errorf("problems = %q, want %q", got, want)
	}
	if got := problems(t, fmt.Sprintf(presenceDoc, ", will_delay: 10m")); len(got) != 0 {
		t.Errorf("will_delay = session_expiry refused: %q", got)
	}
}
