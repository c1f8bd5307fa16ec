package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/edgeshim/edgeshim/bridge"
	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits"
	"github.com/edgeshim/edgeshim/proxy"
	"github.com/edgeshim/edgeshim/tlsterm"
	"github.com/prometheus/client_golang/prometheus"
)

// newLeveledLogger is newLogger with a level that a reload can change.
func newLeveledLogger(cfg config.Log, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	lv := new(slog.LevelVar)
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Level))
	lv.Set(lvl)
	o := &slog.HandlerOptions{Level: lv}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, o)), lv
	}
	return slog.New(slog.NewTextHandler(w, o)), lv
}

// reloader applies a changed configuration file on SIGHUP. What can
// change while running (see reloadable) is read and checked whole first —
// the config file, then every file it names — and only then put in
// force, all of it; if anything fails nothing changes. Other changes are
// logged as needing a restart and ignored. No connection or session is
// touched.
type reloader struct {
	file    string         // "" : the embedded default
	running *config.Config // the configuration in force
	log     *slog.Logger
	level   *slog.LevelVar
	term    *tlsterm.Terminator
	srv     *proxy.Server
	bridges map[string]*bridge.Bridge
	now     func() time.Time

	ok     prometheus.Gauge
	okTime prometheus.Gauge
}

func newReloader(file string, running *config.Config, log *slog.Logger, level *slog.LevelVar, term *tlsterm.Terminator,
	srv *proxy.Server, bridges map[string]*bridge.Bridge, reg prometheus.Registerer) *reloader {
	r := &reloader{file: file, running: running, log: log, level: level, term: term, srv: srv, bridges: bridges, now: time.Now,
		ok: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgeshim_config_last_reload_successful",
			Help: "1 if the last configuration reload (SIGHUP) succeeded, or none was tried; 0 if it failed and the previous configuration stays."}),
		okTime: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgeshim_config_last_reload_success_timestamp_seconds",
			Help: "When the configuration was last loaded successfully (start or reload), in Unix seconds."}),
	}
	r.ok.Set(1)
	r.okTime.Set(float64(r.now().Unix()))
	reg.MustRegister(r.ok, r.okTime)
	return r
}

// reload reloads; on failure every problem is logged and nothing changed.
func (r *reloader) reload() error {
	r.log.Info("reloading configuration", "file", r.file)
	err := r.apply()
	if err != nil {
		r.ok.Set(0)
		var joined interface{ Unwrap() []error }
		if errors.As(err, &joined) {
			for _, e := range joined.Unwrap() {
				r.log.Error("reload problem", "err", e)
			}
		} else {
			r.log.Error("reload problem", "err", err)
		}
		r.log.Error("reload failed; the previous configuration stays in force", "file", r.file)
		return err
	}
	r.ok.Set(1)
	r.okTime.Set(float64(r.now().Unix()))
	return nil
}

func (r *reloader) apply() error {
	next, err := loadConfig(r.file)
	if err != nil {
		return err
	}
	if nofile, err := descriptorLimit(); err == nil {
		limits.FitDescriptors(next, nofile) // as at start: the running caps were fitted too
	}
	eff := reloadable(r.running, next)
	if err := eff.Validate(); err != nil {
		// The new values do not fit the settings that stay until a restart.
		return fmt.Errorf("the reloadable changes do not fit the running configuration: %w", err)
	}
	var errs []error
	tp, err := r.term.PrepareReload(eff.TLS)
	if err != nil {
		errs = append(errs, err)
	}
	var brs []*bridge.Reload
	for _, name := range slices.Sorted(maps.Keys(r.bridges)) {
		br, err := r.bridges[name].PrepareReload(eff.Bridges[name], eff.Limits)
		if err != nil {
			errs = append(errs, fmt.Errorf("bridges.%s: %w", name, err))
			continue
		}
		brs = append(brs, br)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Everything is read and checked: put it in force.
	tp.Commit()
	for _, br := range brs {
		br.Commit()
	}
	r.srv.SetLimits(eff.Limits)
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(eff.Log.Level))
	r.level.Set(lvl)
	if restart := diffPaths(eff, next); len(restart) > 0 {
		r.log.Warn("configuration changes need a restart; ignored until then", "fields", strings.Join(restart, ", "))
	}
	r.running = eff
	r.log.Info("configuration reloaded", "file", r.file, "log_level", eff.Log.Level, "max_body", int64(eff.Limits.MaxBody))
	return nil
}

// reloadable returns running with the fields that can change while
// edgeshim runs taken from next:
//   - tls.certs; tls.session_tickets.key_file (when one was set at start);
//     tls.client_auth.ca and .crl (when client_auth was set at start)
//   - log.level
//   - limits.max_body; limits.per_ip.max_conns, .rate, .burst;
//     limits.handshake.rate, .burst; limits.flapping
//   - bridges.NAME.identity.tokens (the path, and the file is re-read)
//
// Every file named is re-read by the reload whether or not its name
// changed.
func reloadable(running, next *config.Config) *config.Config {
	eff := *running
	eff.TLS.Certs = slices.Clone(next.TLS.Certs)
	if running.TLS.SessionTickets.KeyFile != "" && next.TLS.SessionTickets.KeyFile != "" {
		eff.TLS.SessionTickets.KeyFile = next.TLS.SessionTickets.KeyFile
	}
	if running.TLS.ClientAuth != nil && next.TLS.ClientAuth != nil {
		ca := *running.TLS.ClientAuth
		ca.CA, ca.CRL = next.TLS.ClientAuth.CA, next.TLS.ClientAuth.CRL
		eff.TLS.ClientAuth = &ca
	}
	eff.Log.Level = next.Log.Level
	l, n := &eff.Limits, next.Limits
	l.MaxBody = n.MaxBody
	l.PerIP.MaxConns, l.PerIP.Rate, l.PerIP.Burst = n.PerIP.MaxConns, n.PerIP.Rate, n.PerIP.Burst
	l.Handshake.Rate, l.Handshake.Burst = n.Handshake.Rate, n.Handshake.Burst
	l.Flapping = n.Flapping
	eff.Bridges = maps.Clone(running.Bridges)
	for name, b := range eff.Bridges {
		if nb, ok := next.Bridges[name]; ok && b.Identity.From == "token" && nb.Identity.From == "token" {
			b.Identity.Tokens = nb.Identity.Tokens
			eff.Bridges[name] = b
		}
	}
	return &eff
}

// diffPaths lists the YAML paths at which a and b differ, as deep as
// structs and maps go ("limits.timeouts.idle", "bridges.fleet.upstream.url",
// "routes").
func diffPaths(a, b any) []string {
	var out []string
	diffValue(reflect.ValueOf(a), reflect.ValueOf(b), "", &out)
	return out
}

func diffValue(a, b reflect.Value, path string, out *[]string) {
	if a.Kind() == reflect.Pointer {
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				*out = append(*out, orRoot(path))
			}
			return
		}
		a, b = a.Elem(), b.Elem()
	}
	switch a.Kind() {
	case reflect.Struct:
		for i := range a.NumField() {
			f := a.Type().Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			diffValue(a.Field(i), b.Field(i), joinPath(path, name), out)
		}
	case reflect.Map:
		keys := map[string]bool{}
		for _, k := range a.MapKeys() {
			keys[k.String()] = true
		}
		for _, k := range b.MapKeys() {
			keys[k.String()] = true
		}
		for _, k := range slices.Sorted(maps.Keys(keys)) {
			kv := reflect.ValueOf(k)
			av, bv := a.MapIndex(kv), b.MapIndex(kv)
			if !av.IsValid() || !bv.IsValid() {
				*out = append(*out, joinPath(path, k))
				continue
			}
			diffValue(av, bv, joinPath(path, k), out)
		}
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, orRoot(path))
		}
	}
}

func joinPath(p, k string) string {
	if p == "" {
		return k
	}
	return p + "." + k
}

func orRoot(p string) string {
	if p == "" {
		return "(all)"
	}
	return p
}
