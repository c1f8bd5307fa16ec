package config

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// ValidTopicFilter reports whether f is a well-formed MQTT topic filter:
// 1-65535 bytes of UTF-8 without NUL, "#" only as the whole last level,
// "+" only as a whole level.
func ValidTopicFilter(f string) error {
	if f == "" || len(f) > 65535 || !utf8.ValidString(f) || strings.ContainsRune(f, 0) {
		return fmt.Errorf("must be 1-65535 bytes of UTF-8 without NUL")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("# must be the whole last level")
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("+ must be a whole level")
		}
	}
	return nil
}

func validResponseTopics(e *errs, p string, c Commands) {
	if len(c.ResponseTopics) > 64 {
		e.add(p+".response_topics", "at most 64 filters (got %d)", len(c.ResponseTopics))
	}
	for i, f := range c.ResponseTopics {
		if err := ValidTopicFilter(f); err != nil {
			e.add(fmt.Sprintf("%s.response_topics[%d]", p, i), "%v (got %q)", err, f)
		} else if strings.HasPrefix(f, "#") || strings.HasPrefix(f, "+") || strings.HasPrefix(f, "$") {
			// A filter that starts with a wildcard lets a publisher have
			// devices write to nearly any topic, the commands and telemetry
			// of other devices included.
			e.add(fmt.Sprintf("%s.response_topics[%d]", p, i), "must start with a fixed level, not a wildcard or $ (got %q)", f)
		}
	}
	if c.ResponseTimeout.D() < 1e9 {
		e.add(p+".response_timeout", "must be at least 1s (got %s)", c.ResponseTimeout)
	}
}
