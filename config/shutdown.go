package config

func (s Shutdown) validate(e *errs) {
	if s.Grace < 0 {
		e.add("shutdown.grace", "must not be negative")
	}
	if s.DrainDelay < 0 {
		e.add("shutdown.drain_delay", "must not be negative")
	}
}
