package config

import "math"

// Runtime tunes the Go runtime's garbage collector for an edge: many
// short TLS connections make garbage quickly on a small live heap, which
// the runtime's default (GOGC=100) collects dozens of times a second.
// The GOGC and GOMEMLIMIT environment variables, when set, win over both
// fields.
type Runtime struct {
	// GCPercent is the garbage collector's target (debug.SetGCPercent):
	// the heap grows by this percentage of the live heap before the next
	// collection. -1 turns the collector off until memory_limit is
	// reached (memory_limit is then required). Default: 200 (measured on
	// a noisy shared machine: ~10% less CPU per new TLS connection than
	// 100, for ~20% more RSS per idle WebSocket; 400 saved no more CPU
	// measurably and cost ~40% more RSS; see README). A fleet of held
	// long-polls trades the other way: at 9,000 held, 100 gave ~24% less
	// RSS per held poll (18.9 KiB) for ~26% more CPU per new resumed
	// connection, 50 ~34% less (16.5 KiB) for ~55% more CPU
	// (integration/MEMORY.md, issue 14).
	GCPercent int `yaml:"gc_percent"`
	// MemoryLimit is a soft limit on the memory the Go runtime uses
	// (debug.SetMemoryLimit): nearing it, the collector runs more often
	// whatever gc_percent says. Default: 0, no limit.
	MemoryLimit Size `yaml:"memory_limit"`
}

// DefaultGCPercent is runtime.gc_percent's default.
const DefaultGCPercent = 200

func (r Runtime) withDefaults() Runtime {
	if r.GCPercent == 0 {
		r.GCPercent = DefaultGCPercent
	}
	return r
}

func (r Runtime) validate(e *errs) {
	switch {
	case r.GCPercent < -1:
		e.add("runtime.gc_percent", "must be -1 (off until memory_limit) or a positive percentage (got %d)", r.GCPercent)
	case r.GCPercent == -1 && r.MemoryLimit == 0:
		e.add("runtime.gc_percent", "-1 (collector off) needs runtime.memory_limit, or the heap grows without bound")
	}
	if r.MemoryLimit < 0 || int64(r.MemoryLimit) == math.MaxInt64 {
		e.add("runtime.memory_limit", "must be a size such as 512MiB (got %d)", r.MemoryLimit)
	}
}
