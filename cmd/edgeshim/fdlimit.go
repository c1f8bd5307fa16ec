package main

import (
	"log/slog"
	"syscall"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits"
)

// fitDescriptors reads the process's descriptor limit (RLIMIT_NOFILE, the
// soft one, which is what accept runs into) and returns cfg with its
// connection caps fitted to it (see limits.FitDescriptors), warning for
// each cap lowered.
func fitDescriptors(cfg *config.Config, log *slog.Logger) *config.Config {
	nofile, err := descriptorLimit()
	if err != nil {
		log.Warn("descriptor limit unknown; connection caps not fitted to it", "err", err)
		return cfg
	}
	c := *cfg
	for _, w := range limits.FitDescriptors(&c, nofile) {
		log.Warn(w)
	}
	log.Info("connection caps", "nofile", nofile, "max_conns", *c.Limits.MaxConns,
		"overload_from", limits.SoftConns(c.Limits.Overload.MaxConns, *c.Limits.MaxConns))
	return &c
}

// descriptorLimit is the soft RLIMIT_NOFILE.
func descriptorLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	return rl.Cur, nil
}
