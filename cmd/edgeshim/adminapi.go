package main

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/edgeshim/edgeshim/bridge"
	"github.com/edgeshim/edgeshim/config"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
)

// Admin API list bounds.
const (
	defaultListLimit = 100
	maxListLimit     = 1000
)

// adminAPI is the fleet admin API on the admin listener (admin_api).
type adminAPI struct {
	cfg     *config.Config
	bridges map[string]*bridge.Bridge
	names   []string // bridge names, sorted
	token   []byte   // nil: no token required (loopback admin)
	log     *slog.Logger
}

// newAdminAPI registers the per-bridge gauge of connected sessions and
// returns the admin API's handler, or nil when admin_api is off.
func newAdminAPI(cfg *config.Config, bridges map[string]*bridge.Bridge, reg prometheus.Registerer, log *slog.Logger) (http.Handler, error) {
	for name, b := range bridges {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "edgeshim_bridge_sessions_connected",
			Help:        "Device sessions whose upstream link is up (edgeshim_bridge_sessions_open are those wanted).",
			ConstLabels: prometheus.Labels{"bridge": name},
		}, func() float64 { return float64(b.Connected()) }))
	}
	if !cfg.AdminAPI.Enabled {
		return nil, nil
	}
	a := &adminAPI{cfg: cfg, bridges: bridges, log: log.With("component", "admin-api")}
	for name := range bridges {
		a.names = append(a.names, name)
	}
	sort.Strings(a.names)
	if f := cfg.AdminAPI.TokenFile; f != "" {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("admin_api.token_file: %w", err)
		}
		if a.token = bytes.TrimSpace(data); len(a.token) < 16 {
			return nil, fmt.Errorf("admin_api.token_file: the token must be at least 16 characters")
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/devices/{id}", a.getDevice)
	mux.HandleFunc("GET /v1/devices", a.listDevices)
	mux.HandleFunc("DELETE /v1/devices/{id}/session", a.endSession)
	mux.HandleFunc("GET /v1/config", a.getConfig)
	return a.auth(mux), nil
}

func (a *adminAPI) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.token != nil {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), a.token) != 1 {
				a.log.Warn("admin request refused", "reason", "missing or wrong bearer token", "remote", r.RemoteAddr, "path", r.URL.Path)
				w.Header().Set("WWW-Authenticate", `Bearer realm="edgeshim-admin"`)
				writeJSONError(w, http.StatusUnauthorized, "missing or wrong bearer token")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeJSONError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// deviceSession is one device's session in one bridge.
type deviceSession struct {
	Bridge string `json:"bridge"`
	bridge.DeviceInfo
}

// selectBridges returns the bridges ?bridge= names (all without it), or
// writes a 400/404.
func (a *adminAPI) selectBridges(w http.ResponseWriter, r *http.Request) ([]string, bool) {
	if !r.URL.Query().Has("bridge") {
		return a.names, true
	}
	name := r.URL.Query().Get("bridge")
	if _, ok := a.bridges[name]; !ok {
		writeJSONError(w, http.StatusNotFound, fmt.Sprintf("no bridge %q", name))
		return nil, false
	}
	return []string{name}, true
}

// deviceTarget returns the path's device id and the bridges to look in,
// or writes a 400/404.
func (a *adminAPI) deviceTarget(w http.ResponseWriter, r *http.Request) (string, []string, bool) {
	id := r.PathValue("id")
	if !bridge.ValidDeviceID(id) {
		writeJSONError(w, http.StatusBadRequest, "device id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
		return "", nil, false
	}
	names, ok := a.selectBridges(w, r)
	return id, names, ok
}

// getDevice: GET /v1/devices/{id}[?bridge=NAME] — the device's sessions
// (one per bridge it polls), 404 if none.
func (a *adminAPI) getDevice(w http.ResponseWriter, r *http.Request) {
	id, names, ok := a.deviceTarget(w, r)
	if !ok {
		return
	}
	sessions := []deviceSession{}
	for _, name := range names {
		if d, ok := a.bridges[name].Device(id); ok {
			sessions = append(sessions, deviceSession{name, d})
		}
	}
	if len(sessions) == 0 {
		writeJSONError(w, http.StatusNotFound, "no session for this device")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"device": id, "sessions": sessions})
}

// listDevices: GET /v1/devices[?state=connected|connecting][&limit=N]
// [&bridge=NAME] — sessions ordered by bridge and device id, at most limit
// (default 100, at most 1000); truncated says more matched.
func (a *adminAPI) listDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state := q.Get("state")
	if state != "" && state != bridge.StateConnected && state != bridge.StateConnecting {
		writeJSONError(w, http.StatusBadRequest, fmt.Sprintf("state must be %s or %s", bridge.StateConnected, bridge.StateConnecting))
		return
	}
	limit := defaultListLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxListLimit {
			writeJSONError(w, http.StatusBadRequest, fmt.Sprintf("limit must be 1-%d", maxListLimit))
			return
		}
		limit = n
	}
	names, ok := a.selectBridges(w, r)
	if !ok {
		return
	}
	out := []deviceSession{}
	truncated := false
	for _, name := range names {
		ds, more := a.bridges[name].Devices(state, limit-len(out))
		for _, d := range ds {
			out = append(out, deviceSession{name, d})
		}
		if more {
			truncated = true
			break
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": out, "truncated": truncated})
}

// endSession: DELETE /v1/devices/{id}/session[?bridge=NAME] — ends the
// device's sessions (will → offline; unacknowledged commands stay with
// the broker); 204, or 404 if it had none.
func (a *adminAPI) endSession(w http.ResponseWriter, r *http.Request) {
	id, names, ok := a.deviceTarget(w, r)
	if !ok {
		return
	}
	ended := 0
	for _, name := range names {
		if a.bridges[name].EndSession(id) {
			ended++
			a.log.Info("device session ended by admin", "bridge", name, "device", id, "remote", r.RemoteAddr)
		}
	}
	if ended == 0 {
		writeJSONError(w, http.StatusNotFound, "no session for this device")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// getConfig: GET /v1/config — the configuration in force, defaults
// filled, with passwords and URL credentials redacted.
func (a *adminAPI) getConfig(w http.ResponseWriter, _ *http.Request) {
	v, err := redactedConfig(a.cfg)
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, "cannot render the configuration")
		a.log.Error("render config", "err", err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

const redacted = "REDACTED"

// redactedConfig renders cfg through its YAML form (the field names of
// the file) and redacts every password value and the password of every
// URL.
func redactedConfig(cfg *config.Config) (any, error) {
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, err
	}
	return redact("", v), nil
}

func redact(key string, v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = redact(k, e)
		}
	case []any:
		for i, e := range x {
			x[i] = redact(key, e)
		}
	case string:
		if x != "" && (key == "password" || strings.HasSuffix(key, "_password") || strings.HasSuffix(key, "secret")) {
			return redacted
		}
		if strings.Contains(x, "@") {
			if u, err := url.Parse(x); err == nil && u.User != nil {
				if _, has := u.User.Password(); has {
					u.User = url.UserPassword(u.User.Username(), redacted)
					return u.String()
				}
			}
		}
	}
	return v
}
