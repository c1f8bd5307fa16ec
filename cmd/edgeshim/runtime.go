package main

import (
	"log/slog"
	"runtime/debug"

	"github.com/edgeshim/edgeshim/config"
)

// applyRuntime sets the garbage collector from the runtime section,
// unless the GOGC / GOMEMLIMIT environment variables are set: they win.
// It returns the settings that were in force before, to restore (tests).
func applyRuntime(rc config.Runtime, getenv func(string) string, log *slog.Logger) (restore func()) {
	prevGC, prevLimit := -2, int64(-1)
	if getenv("GOGC") == "" {
		prevGC = debug.SetGCPercent(rc.GCPercent)
	} else {
		log.Info("GOGC is set: runtime.gc_percent not applied", "GOGC", getenv("GOGC"))
	}
	if rc.MemoryLimit > 0 {
		if getenv("GOMEMLIMIT") == "" {
			prevLimit = debug.SetMemoryLimit(int64(rc.MemoryLimit))
		} else {
			log.Info("GOMEMLIMIT is set: runtime.memory_limit not applied", "GOMEMLIMIT", getenv("GOMEMLIMIT"))
		}
	}
	return func() {
		if prevGC != -2 {
			debug.SetGCPercent(prevGC)
		}
		if prevLimit >= 0 {
			debug.SetMemoryLimit(prevLimit)
		}
	}
}
