package config

import (
	"errors"
	"strings"
	"testing"
)

func noEnv(string) (string, bool) { return "", false }

// problems parses, fills defaults and validates, returning every message.
func problems(t *testing.T, doc string) []string {
	t.Helper()
	c, err := Parse([]byte(doc), func(k string) (string, bool) {
		if k == "PORT" {
			return "9443", true
		}
		return "", false
	})
	if err != nil {
		return []string{err.Error()}
	}
	err = c.WithDefaults().Validate()
	if err == nil {
		return nil
	}
	var out []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Errorf("%v is not a *FieldError", e)
		}
		out = append(out, e.Error())
	}
	return out
}

func TestValidateMessages(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"unknown key", "listen: {https: \":1\", foo: 1}", []string{`line 1: listen.foo: unknown field (known: https, http3, http2_server, http, admin, proxy_protocol)`}},
		{"http2 server", "listen: {http2_server: nginx}", []string{`listen.http2_server: must be "edgeshim" or "net/http" (got "nginx")`}},
		{"unknown top key", "lisen: {}", []string{`line 1: lisen: unknown field (did you mean "listen"?)`}},
		{"bad duration", "limits:\n  timeouts: {idle: 10}", []string{`line 2: limits.timeouts.idle: invalid duration "10" (want e.g. "10s", "5m", "1h")`}},
		{"bad size", "limits: {max_body: 1MB2}", []string{`line 1: limits.max_body: invalid size "1MB2" (want e.g. "1048576", "64KiB", "1MiB")`}},
		{"missing env", "listen: {https: \"${NOPE}\"}", []string{`line 1: listen.https: environment variable NOPE is not set (${NOPE:-default} gives a default)`}},
		{"keep zero", "tls: {session_tickets: {keep: -1}}", []string{`tls.session_tickets.keep: must be at least 1`}},
		{"rotate short for generated keys", "tls: {session_tickets: {rotate: 1h}}", []string{`tls.session_tickets.rotate: must be at least 6h with generated keys, which are kept for the 7-day TLS 1.3 ticket lifetime (got 1h0m0s)`}},
		{"min version", "tls: {min_version: \"1.1\"}", []string{`tls.min_version: must be "1.2" or "1.3" (got "1.1")`}},
		{"cert without key", "tls: {certs: [{cert: a.pem}]}", []string{`tls.certs[0].key: is required`}},
		{"client auth mode", "tls: {client_auth: {ca: ca.pem, mode: maybe}}", []string{`tls.client_auth.mode: must be require or verify_if_given (got "maybe")`}},
		{"bad listen", "listen: {https: \"8443\"}", []string{`listen.https: must be host:port or :port (got "8443")`}},
		{"retry window", "limits: {retry_after: {min: 30s, max: 10s}}", []string{`limits.retry_after.max: must be at least limits.retry_after.min (10s < 30s)`}},
		{"per ip over total", "limits: {max_conns: 10, per_ip: {max_conns: 20}}", []string{`limits.per_ip.max_conns: must not exceed limits.max_conns (20 > 10)`}},
		{"route to nowhere", "routes: [{path: /x, bridge: nope}]", []string{`routes[0].bridge: names no bridge in bridges (got "nope")`}},
		{"route two kinds", "routes: [{path: /x, proxy: {backends: [\"http://a\"]}, mqtt_ws: {broker: \"tcp://b:1883\"}}]", []string{`routes[0]: must set exactly one of bridge, proxy, mqtt_ws`}},
		{"backend url", "routes: [{path: /, proxy: {backends: [\"ftp://a\"]}}]", []string{`routes[0].proxy.backends[0]: must be an http://, https:// or h2c:// URL with a host (got "ftp://a")`}},
		{"bridge path identity unauthenticated", `bridges:
  b:
    upstream: {url: "mqtt://127.0.0.1:1883"}
    identity: {from: path}
    poll: {path: "/d/{device}"}
    commands: {topic: "d/{device}/c"}`, []string{`bridges.b.identity.allow_unauthenticated: must be true with from: path (the path proves nothing)`}},
		{"bridge header identity without trusted proxies", `bridges:
  b:
    upstream: {url: "mqtt://127.0.0.1:1883"}
    identity: {from: header, header: X-Device-Id}
    poll: {path: "/d/{device}"}
    commands: {topic: "d/{device}/c"}`, []string{`bridges.b.identity.from: header needs trusted_proxies: the header is believed only from those peers (anyone else could claim any device)`}},
		{"client auth crl without ca", "tls: {client_auth: {crl: r.pem}}", []string{`tls.client_auth.ca: is required`}},
		{"bridge wildcard topic and long wait", `bridges:
  b:
    upstream: {url: "mqtt://127.0.0.1:1883"}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/d/{device}", max_wait: 5m}
    commands: {topic: "d/+/{device}"}`, []string{
			`bridges.b.poll.max_wait: must be shorter than limits.timeouts.idle (5m0s >= 2m0s)`,
			`bridges.b.commands.topic: must not contain MQTT wildcards + or # (got "d/+/{device}")`}},
		{"websocket driver", `bridges:
  b:
    upstream: {driver: websocket, url: "mqtt://backend/{device}"}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/d/{device}"}
    presence: {topic: "d/{device}/status"}`, []string{
			`bridges.b.upstream.url: must be a ws:// or wss:// URL with a host (got "mqtt://backend/{device}")`,
			`bridges.b.presence.topic: needs upstream.driver mqtt (a WebSocket backend sees presence as the socket itself)`}},
		{"websocket driver without device", `bridges:
  b:
    upstream: {driver: websocket, url: "wss://backend/devices"}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/d/{device}"}`, []string{
			`bridges.b.upstream.url: must name {device} in its path or query: each device has its own session (got "wss://backend/devices")`}},
		{"health check interval", "routes: [{path: /, proxy: {backends: [\"http://a\"], health_check: {interval: 1ms}}}]", []string{
			`routes[0].proxy.health_check.interval: must be at least 10ms (got 1ms)`}},
		{"acme http-01 without listener", "tls: {acme: {domains: [edge.example.com], challenges: [http-01]}}", []string{`tls.acme.challenges[0]: http-01 needs listen.http`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := problems(t, tc.doc)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func TestEnvExpansionAndDefaults(t *testing.T) {
	c, err := Parse([]byte("listen: {https: \"127.0.0.1:${PORT}\", admin: \"${ADMIN:-127.0.0.1:9999}\"}\nlog: {level: \"$$x\"}"), func(k string) (string, bool) {
		if k == "PORT" {
			return "9443", true
		}
		return "", false
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.HTTPS != "127.0.0.1:9443" || c.Listen.Admin != "127.0.0.1:9999" || c.Log.Level != "$x" {
		t.Errorf("expanded: %+v %q", c.Listen, c.Log.Level)
	}
	d := c.WithDefaults()
	if c.Limits.MaxBody != 0 {
		t.Error("WithDefaults modified its receiver")
	}
	if d.Limits.MaxBody != 1<<20 || d.TLS.SessionTickets.Keep != 3 || d.Limits.Timeouts.Idle.D().String() != "2m0s" {
		t.Errorf("defaults: %+v", d.Limits)
	}
}

func TestEmbeddedDefaultValid(t *testing.T) {
	if err := Default().WithDefaults().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]Size{"512": 512, "64KiB": 65536, "1MiB": 1 << 20, "10kB": 10000, "2 MB": 2000000} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("%q = %d %v, want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "1XB", "MiB", "99999999999999GiB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzParse: any document either fails to parse or yields a config whose
// defaults fill and whose validation runs without panicking. ${ENV} lands in
// typed fields: N holds a number, S a word, E nothing, B a boolean. Parse
// and Check agree: Parse fails exactly when Check reports a parse problem,
// and every problem Check reports is a *FieldError unless the document is
// not YAML at all.
func FuzzParse(f *testing.F) {
	f.Add([]byte("listen: {https: \":8443\"}\nlimits: {max_body: 1MiB}"))
	f.Add([]byte("bridges: {b: {poll: {path: /d/{device}}}}"))
	f.Add([]byte("routes: [{path: /, proxy: {backends: [\"http://a\"]}}]"))
	f.Add([]byte("limits: {max_conns: ${N}, max_body: ${N}KiB, timeouts: {idle: ${N}s}}\nlisten: {http3: ${B}}"))
	f.Add([]byte("limits: {max_conns: ${S}, per_ip: {rate: ${E:-1.5}}}\nlog: {level: \"$${N}\"}"))
	f.Add([]byte("a: &x {max_conns: ${N}}\nlimits: *x\nlisen: 1\nlimits: {}"))
	env := map[string]string{"N": "100", "S": "abc", "E": "", "B": "true"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	f.Fuzz(func(t *testing.T, data []byte) {
		c, perr := Parse(data, lookup)
		if perr == nil {
			_ = c.WithDefaults().Validate()
		}
		_, w, err := parse(data, lookup)
		if err != nil {
			if perr == nil || perr.Error() != err.Error() {
				t.Fatalf("parse stopped (%v) but Parse said %v", err, perr)
			}
			return
		}
		if (perr != nil) != (len(w.errs) > 0) {
			t.Fatalf("Parse: %v; walk found %d problems", perr, len(w.errs))
		}
		_, cerr := check(data, lookup, false)
		for _, e := range unjoin(cerr) {
			var fe *FieldError
			if !errors.As(e, &fe) {
				t.Errorf("%v is not a *FieldError: the walk missed what the decoder refused", e)
			}
		}
	})
}
