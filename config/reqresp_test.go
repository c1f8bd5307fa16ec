package config

import (
	"strings"
	"testing"
)

func TestResponseTopicsValidation(t *testing.T) {
	doc := func(cmds string) string {
		return strings.Replace(bridgeDoc(""), `commands: {topic: "d/{device}/c"}`, cmds, 1)
	}
	got := checkAll(t, doc(`commands: {topic: "d/{device}/c", response_topics: ["replies/#", "a/#/b", "#", "+/x", "x+/y", "$SYS/#"], response_timeout: 500ms}`), nil)
	for _, want := range []string{
		`bridges.b.commands.response_topics[1]: # must be the whole last level (got "a/#/b")`,
		`bridges.b.commands.response_topics[2]: must start with a fixed level, not a wildcard or $ (got "#")`,
		`bridges.b.commands.response_topics[3]: must start with a fixed level`,
		`bridges.b.commands.response_topics[4]: + must be a whole level (got "x+/y")`,
		`bridges.b.commands.response_topics[5]: must start with a fixed level`,
		`bridges.b.commands.response_timeout: must be at least 1s (got 500ms)`,
	} {
		if !strings.Contains(strings.Join(got, "\n"), want) {
			t.Errorf("missing %q in:\n%s", want, strings.Join(got, "\n"))
		}
	}
	if len(got) != 6 {
		t.Errorf("got %d problems, want 6:\n%s", len(got), strings.Join(got, "\n"))
	}
	if got := checkAll(t, doc(`commands: {topic: "d/{device}/c", response_topics: ["replies/#", "apps/+/answers"]}`), nil); len(got) != 0 {
		t.Errorf("valid: %v", got)
	}
	c, err := check([]byte(bridgeDoc("")), func(string) (string, bool) { return "", false }, false)
	if err != nil || c.Bridges["b"].Commands.ResponseTimeout.D().Seconds() != 30 || len(c.Bridges["b"].Commands.ResponseTopics) != 0 {
		t.Errorf("defaults: %v %+v", err, c.Bridges["b"].Commands)
	}
}
