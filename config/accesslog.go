package config

// AccessLog configures the access log: one line per request, and per
// WebSocket when it ends (client, TLS, route, bridge and device, method,
// path without its query, status, bytes, duration, commands delivered,
// upstream, the reason of a refusal). Never a query string (but the
// poll's numeric wait), a header or a payload.
type AccessLog struct {
	// Enabled writes the access log. Default: true.
	Enabled *bool `yaml:"enabled"`
	// File is the file lines are appended to (created if missing, opened
	// at start). Default: "" (standard error, with the other logs).
	File string `yaml:"file"`
	// Format is text or json. Default: log.format.
	Format string `yaml:"format"`
	// Sample is the fraction (0 to 1) of requests answered below 400, and
	// of WebSockets, that are logged. Default: 0.1.
	Sample *float64 `yaml:"sample"`
	// ErrorSample is the fraction (0 to 1) of requests answered 400 or
	// above that are logged. Default: 1 (all).
	ErrorSample *float64 `yaml:"error_sample"`
}

// DefaultAccessLogSample is access_log.sample's default: at 5,000 polls/s
// it keeps the access log's cost within a few percent of the CPU the
// polls take (see README, Logs).
const DefaultAccessLogSample = 0.1

func (a AccessLog) withDefaults(l Log) AccessLog {
	out := a
	out.Enabled = boolOr(a.Enabled, true)
	if out.Format == "" {
		out.Format = "text"
		if l.Format == "json" { // an invalid log.format is log.format's problem
			out.Format = "json"
		}
	}
	out.Sample = floatOr(a.Sample, DefaultAccessLogSample)
	out.ErrorSample = floatOr(a.ErrorSample, 1)
	return out
}

func (a AccessLog) validate(e *errs) {
	switch a.Format {
	case "text", "json":
	default:
		e.add("access_log.format", "must be text or json (got %q)", a.Format)
	}
	for _, f := range []struct {
		path string
		v    *float64
	}{{"access_log.sample", a.Sample}, {"access_log.error_sample", a.ErrorSample}} {
		if f.v != nil && !(*f.v >= 0 && *f.v <= 1) {
			e.add(f.path, "must be a fraction from 0 to 1 (got %v)", *f.v)
		}
	}
}

// boolOr returns a copy of *p, or v when p is nil.
func boolOr(p *bool, v bool) *bool {
	if p != nil {
		v = *p
	}
	return &v
}

// floatOr returns a copy of *p, or v when p is nil.
func floatOr(p *float64, v float64) *float64 {
	if p != nil {
		v = *p
	}
	return &v
}
