package config

import (
	"slices"
	"strings"
	"testing"
)

// TestRuntimeDefaultsAndValidation: gc_percent defaults to 400, memory
// limit to none; -1 needs a memory limit; below -1 is refused, with the
// field path.
func TestRuntimeDefaultsAndValidation(t *testing.T) {
	c, err := Parse([]byte(`runtime: {memory_limit: 256MiB}`), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	rc := c.WithDefaults().Runtime
	if rc.GCPercent != DefaultGCPercent || rc.MemoryLimit != 256<<20 {
		t.Errorf("runtime with defaults: %+v, want gc_percent %d memory_limit 256MiB", rc, DefaultGCPercent)
	}
	for doc, want := range map[string]string{
		`runtime: {gc_percent: 100}`:                    "",
		`runtime: {gc_percent: -1, memory_limit: 1GiB}`: "",
		`runtime: {gc_percent: -1}`:                     "runtime.gc_percent: -1 (collector off) needs runtime.memory_limit",
		`runtime: {gc_percent: -5, memory_limit: 1GiB}`: "runtime.gc_percent: must be -1",
		`runtime: {gc_percent: 50, memory_limit: 1GiB}`: "",
	} {
		got := problems(t, doc)
		if want == "" {
			if len(got) > 0 {
				t.Errorf("%s: %v, want valid", doc, got)
			}
			continue
		}
		if !slices.ContainsFunc(got, func(m string) bool { return strings.HasPrefix(m, want) }) {
			t.Errorf("%s: %v, want a problem starting %q", doc, got, want)
		}
	}
}
