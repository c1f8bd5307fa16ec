package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// checkAll runs Check without touching files and returns every message.
func checkAll(t *testing.T, doc string, env map[string]string) []string {
	t.Helper()
	_, err := check([]byte(doc), func(k string) (string, bool) { v, ok := env[k]; return v, ok }, false)
	var out []string
	for _, e := range unjoin(err) {
		out = append(out, e.Error())
	}
	return out
}

func TestEnvInTypedFields(t *testing.T) {
	env := map[string]string{"MAXC": "100", "WORD": "abc", "EMPTY": "", "T": "true", "DUR": "90s",
		"SIZE": "2MiB", "RATE": "2.5", "NULL": "null", "PORT": "9443", "SECRET": "s3cr3t"}
	for _, tc := range []struct {
		name, doc string
		want      func(*Config) bool
		errs      []string
	}{
		{name: "int", doc: "limits:\n  max_conns: ${MAXC}", want: func(c *Config) bool { return c.Limits.MaxConns != nil && *c.Limits.MaxConns == 100 }},
		{name: "int quoted", doc: `limits: {max_conns: "${MAXC}"}`, want: func(c *Config) bool { return c.Limits.MaxConns != nil && *c.Limits.MaxConns == 100 }},
		{name: "flow style needs quotes", doc: "limits: {max_conns: ${MAXC}}", errs: []string{"not valid YAML: yaml: did not find expected ',' or '}'"}},
		{name: "flow style quoted", doc: `limits: {max_conns: "${MAXC}", per_ip: {max_conns: "${MAXC}"}}`, want: func(c *Config) bool { return c.Limits.PerIP.MaxConns != nil && *c.Limits.PerIP.MaxConns == 100 }},
		{name: "int not a number", doc: "limits:\n  max_conns: ${WORD}", errs: []string{`line 2: limits.max_conns: ${WORD} is not an integer`}},
		{name: "int literal word", doc: "limits: {max_conns: abc}", errs: []string{`line 1: limits.max_conns: must be an integer (got "abc")`}},
		{name: "int with default", doc: "limits:\n  max_conns: ${UNSET:-7}", want: func(c *Config) bool { return c.Limits.MaxConns != nil && *c.Limits.MaxConns == 7 }},
		{name: "empty is unset", doc: "limits:\n  max_conns: ${EMPTY}", want: func(c *Config) bool { return c.Limits.MaxConns == nil }},
		{name: "bool", doc: "listen:\n  http3: ${T}", want: func(c *Config) bool { return c.Listen.HTTP3 }},
		{name: "bool not", doc: "listen:\n  http3: ${MAXC}", errs: []string{`line 2: listen.http3: ${MAXC} is not true or false`}},
		{name: "float", doc: "limits:\n  per_ip:\n    rate: ${RATE}", want: func(c *Config) bool { return c.Limits.PerIP.Rate != nil && *c.Limits.PerIP.Rate == 2.5 }},
		{name: "duration", doc: "limits:\n  timeouts:\n    idle: ${DUR}", want: func(c *Config) bool { return c.Limits.Timeouts.Idle.D() == 90*time.Second }},
		{name: "duration bad", doc: "limits:\n  timeouts:\n    idle: ${MAXC}", errs: []string{`line 3: limits.timeouts.idle: ${MAXC} is not a duration like "10s", "5m" or "1h"`}},
		{name: "size", doc: "limits:\n  max_body: ${SIZE}", want: func(c *Config) bool { return c.Limits.MaxBody == 2<<20 }},
		{name: "size in text", doc: "limits:\n  max_body: ${MAXC}KiB", want: func(c *Config) bool { return c.Limits.MaxBody == 100<<10 }},
		{name: "pointer int", doc: bridgeDoc("telemetry:\n      path: /t/{device}\n      topic: t/{device}\n      qos: ${Q:-0}"), want: func(c *Config) bool { return *c.Bridges["b"].Telemetry.QoS == 0 }},
		{name: "string keeps text", doc: "log:\n  level: ${NULL}", errs: []string{`line 2: log.level: must be one of debug, info, warn, error (got "null")`}},
		{name: "string of digits", doc: `listen: {https: "127.0.0.1:${PORT}"}`, want: func(c *Config) bool { return c.Listen.HTTPS == "127.0.0.1:9443" }},
		{name: "dollar dollar", doc: `bridges: {b: {upstream: {password: "a$$${SECRET}$$"}}}`, want: func(c *Config) bool { return c.Bridges["b"].Upstream.Password == "a$s3cr3t$" }},
		{name: "dollar dollar brace stays", doc: `log: {level: "$${MAXC}"}`, errs: []string{`line 1: log.level: must be one of debug, info, warn, error (got "${MAXC}")`}},
		{name: "secret not echoed", doc: "limits:\n  max_conns: ${SECRET}", errs: []string{`line 2: limits.max_conns: ${SECRET} is not an integer`}},
		{name: "two unset", doc: "limits:\n  max_conns: ${A}\n  max_headers: ${B}", errs: []string{
			`line 2: limits.max_conns: environment variable A is not set (${A:-default} gives a default)`,
			`line 3: limits.max_headers: environment variable B is not set (${B:-default} gives a default)`}},
		{name: "alias expanded once", doc: "data_dir: /tmp\nlog: {level: &a \"$${MAXC}\", format: *a}", errs: []string{
			`line 2: log.level: must be one of debug, info, warn, error (got "${MAXC}")`,
			`line 2: log.format: must be text or json (got "${MAXC}")`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := checkAll(t, tc.doc, env)
			if tc.want != nil {
				c, err := Parse([]byte(tc.doc), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
				if err != nil {
					t.Fatal(err)
				}
				if !tc.want(c) {
					t.Errorf("decoded wrong: %+v %+v", c.Limits, c.Listen)
				}
				if tc.errs == nil {
					// Check may still find validation problems in a
					// fragment; the value is what is tested here.
					return
				}
			}
			if strings.Join(got, "\n") != strings.Join(tc.errs, "\n") {
				t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.errs, "\n  "))
			}
			for _, s := range got {
				if strings.Contains(s, "s3cr3t") {
					t.Errorf("an environment value was echoed: %s", s)
				}
			}
		})
	}
}

func bridgeDoc(extra string) string {
	return `bridges:
  b:
    upstream: {url: "mqtt://127.0.0.1:1883"}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/d/{device}"}
    commands: {topic: "d/{device}/c"}
    ` + extra + "\n"
}

// withLine replaces the line of doc that starts (after indentation) with
// prefix.
func withLine(doc, prefix, line string) string {
	lines := strings.Split(doc, "\n")
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			lines[i] = l[:len(l)-len(strings.TrimLeft(l, " "))] + line
		}
	}
	return strings.Join(lines, "\n")
}

// TestEveryProblemInOneRun: a file with a typo and four other mistakes
// (two wrong types, a bad value, a duplicate key) reports all five, in
// one run, each with its path and line.
func TestEveryProblemInOneRun(t *testing.T) {
	doc := `listen:
  https: ":8443"
  admn: "127.0.0.1:9090"
limits:
  max_conns: lots
  timeouts:
    idle: 10
tls:
  min_version: "1.0"
log:
  level: info
  level: debug
`
	want := []string{
		`line 3: listen.admn: unknown field (did you mean "admin"?)`,
		`line 5: limits.max_conns: must be an integer (got "lots")`,
		`line 7: limits.timeouts.idle: invalid duration "10" (want e.g. "10s", "5m", "1h")`,
		`line 12: log.level: duplicate key (first at line 11)`,
		`line 9: tls.min_version: must be "1.2" or "1.3" (got "1.0")`,
	}
	got := checkAll(t, doc, nil)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	// Parse alone reports the four parse problems, not just the first.
	_, err := Parse([]byte(doc), noEnv)
	if n := len(unjoin(err)); n != 4 {
		t.Errorf("Parse reported %d problems, want 4: %v", n, err)
	}
	for _, e := range unjoin(err) {
		var fe *FieldError
		if !errors.As(e, &fe) || fe.Line == 0 || fe.Path == "" {
			t.Errorf("%v: want a *FieldError with path and line", e)
		}
	}
}

func TestCheckLinesAndSuppression(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		// A defaulted field is placed at its section's line.
		{"section line", "limits:\n  per_ip:\n    max_conns: 90000\n", []string{
			`line 3: limits.per_ip.max_conns: must not exceed limits.max_conns (90000 > 50000)`}},
		{"required field at item line", "tls:\n  certs:\n    - cert: a.pem\n", []string{`line 3: tls.certs[0].key: is required`}},
		// A removed (wrongly typed) value is not reported again by validation.
		{"no repeat", "routes:\n  - path: /\n    proxy: {backends: http://a}\n", []string{
			`line 3: routes[0].proxy.backends: must be a list`,
		}},
		{"every unknown key", "listen:\n  htps: \":1\"\n  admn: \"off\"\nlimts: {}\n", []string{
			`line 2: listen.htps: unknown field (did you mean "https"?)`,
			`line 3: listen.admn: unknown field (did you mean "admin"?)`,
			`line 4: limts: unknown field (did you mean "limits"?)`}},
		{"struct given scalar", "limits: 5\n", []string{`line 1: limits: must be a mapping`}},
		{"scalar given list", "limits: {max_conns: [1]}\n", []string{`line 1: limits.max_conns: must be an integer`}},
		{"unknown in list item", "routes:\n  - path: /x\n    brige: b\n", []string{
			`line 3: routes[0].brige: unknown field (did you mean "bridge"?)`,
			`line 2: routes[0]: must set exactly one of bridge, proxy, mqtt_ws`}},
		{"unknown in map value", bridgeDoc("pol: {}"), []string{`line 7: bridges.b.pol: unknown field (did you mean "poll"?)`}},
		{"top level not a mapping", "- a\n", []string{`line 1: top level: must be a mapping`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := checkAll(t, tc.doc, nil)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

// TestWalkerTypes: fields others may add (inline structs, any values,
// lists of durations, maps of strings) are walked like the decoder reads
// them.
func TestWalkerTypes(t *testing.T) {
	type Inner struct {
		A int `yaml:"a"`
	}
	type T struct {
		Inner `yaml:",inline"`
		Any   any                 `yaml:"any"`
		Ds    []Duration          `yaml:"ds"`
		M     map[string]string   `yaml:"m"`
		P     *bool               `yaml:"p"`
		MM    map[string][]string `yaml:"mm"`
	}
	for doc, want := range map[string]string{
		"a: 1\nany: {x: [1, 2]}\nds: [1s, 2m]\nm: {k: v}\np: true\nmm: {k: [a]}": "",
		"a: x":            `line 1: a: must be an integer (got "x")`,
		"b: 1":            `line 1: b: unknown field (did you mean "a"?)`,
		"ds: [1s, 10]":    `line 1: ds[1]: invalid duration "10" (want e.g. "10s", "5m", "1h")`,
		"m: {k: [v]}":     `line 1: m.k: must be a string`,
		"p: maybe":        `line 1: p: must be true or false (got "maybe")`,
		"mm: {k: {a: 1}}": `line 1: mm.k: must be a list`,
	} {
		var root yaml.Node
		if err := yaml.Unmarshal([]byte(doc), &root); err != nil {
			t.Fatal(err)
		}
		w := newWalker(noEnv)
		w.walk(root.Content[0], reflect.TypeFor[T](), "")
		got := ""
		if err := errors.Join(w.errs...); err != nil {
			got = err.Error()
		}
		if got != want {
			t.Errorf("%q: got %q, want %q", doc, got, want)
		}
		var v T
		if err := root.Content[0].Decode(&v); err != nil {
			t.Errorf("%q: what the walk left does not decode: %v", doc, err)
		}
	}
}

func TestAliasBombBounded(t *testing.T) {
	doc := "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
	prev := "a"
	for i := range 8 {
		name := string(rune('b' + i))
		doc += name + ": &" + name + " [*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + "]\n"
		prev = name
	}
	doc += "trusted_proxies: *" + prev + "\n"
	_, err := Parse([]byte(doc), noEnv)
	if err == nil {
		t.Fatal("alias bomb parsed")
	}
}

func TestListenerConflicts(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"same port all interfaces", `listen: {https: ":8443", http: "0.0.0.0:8443"}`, []string{
			`listen.http: conflicts with listen.https: both listen on port 8443 (":8443" and "0.0.0.0:8443")`}},
		{"wildcard and loopback", `listen: {https: ":9090"}`, []string{
			`listen.admin: conflicts with listen.https: both listen on port 9090 (":9090" and "127.0.0.1:9090")`}},
		{"ipv6 wildcard", `listen: {https: "[::]:8443", http: "127.0.0.1:8443"}`, []string{
			`listen.http: conflicts with listen.https: both listen on port 8443 ("[::]:8443" and "127.0.0.1:8443")`}},
		{"localhost is loopback", `listen: {https: "localhost:8443", admin: "[::1]:8443"}`, []string{
			`listen.admin: conflicts with listen.https: both listen on port 8443 ("localhost:8443" and "[::1]:8443")`}},
		{"embedded broker", "listen: {https: \":1883\"}\nembedded_broker: {enabled: true}", []string{
			`embedded_broker.listen: conflicts with listen.https: both listen on port 1883 (":1883" and "127.0.0.1:1883")`}},
		{"different loopbacks", `listen: {https: "127.0.0.1:8443", http: "127.0.0.2:8443"}`, nil},
		{"different ports", `listen: {https: ":8443", http: ":8080", http3: true}`, nil},
		{"port zero", `listen: {https: "127.0.0.1:0", http: "127.0.0.1:0", admin: "127.0.0.1:0"}`, nil},
		{"admin off", `listen: {https: ":9090", admin: "off"}`, nil},
		{"broker disabled", "listen: {https: \":1883\"}\nembedded_broker: {listen: \":1883\"}", nil},
		{"mqtt_ws broker is dialled", "listen: {https: \"127.0.0.1:1883\"}\nroutes: [{path: /mqtt, mqtt_ws: {broker: \"tcp://127.0.0.1:1883\"}}]", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := problems(t, tc.doc)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func TestEmbeddedDefaultOnLoopback(t *testing.T) {
	c := Default().WithDefaults()
	for _, a := range []string{c.Listen.HTTPS, c.Listen.Admin, c.EmbeddedBroker.Listen} {
		host, _, _ := strings.Cut(a, ":")
		if host != "127.0.0.1" {
			t.Errorf("embedded default listens on %q, want loopback only", a)
		}
	}
	// A written config keeps the documented all-interfaces default.
	w, err := Parse([]byte("log: {level: info}"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if got := w.WithDefaults().Listen.HTTPS; got != ":8443" {
		t.Errorf("written config's listen.https default = %q, want \":8443\"", got)
	}
}

// testPKI writes a CA, a certificate and key it signed, another key, a CRL
// and a file that is not PEM into a temporary directory.
type testPKI struct{ dir, ca, cert, key, otherKey, crl, junk string }

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	p := testPKI{dir: dir, ca: filepath.Join(dir, "ca.pem"), cert: filepath.Join(dir, "cert.pem"), key: filepath.Join(dir, "key.pem"),
		otherKey: filepath.Join(dir, "other.pem"), crl: filepath.Join(dir, "ca.crl"), junk: filepath.Join(dir, "junk.txt")}
	write := func(path, typ string, der []byte) {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	must := func(b []byte, err error) []byte {
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	caKey, leafKey := key(), key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER := must(x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey))
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	write(p.ca, "CERTIFICATE", caDER)
	write(p.cert, "CERTIFICATE", must(x509.CreateCertificate(rand.Reader, leaf, caCert, &leafKey.PublicKey, caKey)))
	write(p.key, "PRIVATE KEY", must(x509.MarshalPKCS8PrivateKey(leafKey)))
	write(p.otherKey, "PRIVATE KEY", must(x509.MarshalPKCS8PrivateKey(key())))
	write(p.crl, "X509 CRL", must(x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1),
		ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour)}, caCert, caKey)))
	if err := os.WriteFile(p.junk, []byte("not pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckFiles(t *testing.T) {
	p := newTestPKI(t)
	missing := filepath.Join(p.dir, "missing.pem")
	for _, tc := range []struct {
		name, doc string
		want      []string // path: message prefix
		is        error
	}{
		{name: "all good", doc: `tls:
  certs: [{cert: CERT, key: KEY}]
  client_auth: {ca: CA}
  session_tickets: {key_file: JUNK}
  acme: {domains: [edge.example.com], ca_root: CA, challenges: [tls-alpn-01]}
` + withLine(bridgeDoc(""), "identity:", "identity: {from: token, tokens: JUNK}") + `routes:
  - {path: /, proxy: {backends: ["https://a"], tls: {ca: CA, cert: CERT, key: KEY}}}
`},
		{name: "missing cert", doc: "tls: {certs: [{cert: MISSING, key: KEY}]}", want: []string{"line 1: tls.certs[0].cert: stat " + missing}, is: fs.ErrNotExist},
		{name: "missing key", doc: "tls: {certs: [{cert: CERT, key: MISSING}]}", want: []string{"line 1: tls.certs[0].key: stat " + missing}, is: fs.ErrNotExist},
		{name: "key does not match", doc: "tls: {certs: [{cert: CERT, key: OTHER}]}", want: []string{"line 1: tls.certs[0]: " + p.cert + " and " + p.otherKey + ": tls: private key does not match public key"}},
		{name: "cert not pem", doc: "tls: {certs: [{cert: JUNK, key: KEY}]}", want: []string{"line 1: tls.certs[0]: " + p.junk + " and " + p.key + ": tls: failed to find any PEM data"}},
		{name: "cert is a directory", doc: "tls: {certs: [{cert: DIR, key: KEY}]}", want: []string{"line 1: tls.certs[0].cert: " + p.dir + ": not a regular file: a directory"}, is: ErrNotRegular},
		{name: "client ca missing", doc: "tls: {client_auth: {ca: MISSING}}", want: []string{"line 1: tls.client_auth.ca: stat " + missing}, is: fs.ErrNotExist},
		{name: "client ca not pem", doc: "tls: {client_auth: {ca: JUNK}}", want: []string{"line 1: tls.client_auth.ca: " + p.junk + ": no PEM certificates"}, is: ErrNoCertificates},
		{name: "ticket key file missing", doc: "tls: {session_tickets: {key_file: MISSING}}", want: []string{"line 1: tls.session_tickets.key_file: stat " + missing}, is: fs.ErrNotExist},
		{name: "acme ca_root", doc: "tls: {acme: {domains: [a.example.com], ca_root: JUNK, challenges: [tls-alpn-01]}}", want: []string{"line 1: tls.acme.ca_root: " + p.junk + ": no PEM certificates"}, is: ErrNoCertificates},
		{name: "tokens missing", doc: withLine(bridgeDoc(""), "identity:", "identity: {from: token, tokens: MISSING}"), want: []string{"line 4: bridges.b.identity.tokens: stat " + missing}, is: fs.ErrNotExist},
		{name: "tokens device", doc: withLine(bridgeDoc(""), "identity:", "identity: {from: token, tokens: /dev/null}"), want: []string{"line 4: bridges.b.identity.tokens: /dev/null: not a regular file"}, is: ErrNotRegular},
		{name: "upstream ca", doc: withLine(bridgeDoc(""), "upstream:", "upstream: {url: \"mqtts://127.0.0.1:8883\", tls: {ca: MISSING}}"), want: []string{"line 3: bridges.b.upstream.tls.ca: stat " + missing}, is: fs.ErrNotExist},
		{name: "backend client cert", doc: `routes: [{path: /, proxy: {backends: ["https://a"], tls: {cert: CERT, key: OTHER}}}]`, want: []string{"line 1: routes[0].proxy.tls: " + p.cert + " and " + p.otherKey + ": tls: private key does not match"}},
		{name: "several at once", doc: "tls:\n  certs: [{cert: MISSING, key: MISSING}]\n  client_auth: {ca: JUNK}\n", want: []string{
			"line 2: tls.certs[0].cert: stat", "line 2: tls.certs[0].key: stat", "line 3: tls.client_auth.ca: " + p.junk}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := strings.NewReplacer("CERT", p.cert, "KEY", p.key, "OTHER", p.otherKey, "CA", p.ca, "JUNK", p.junk,
				"MISSING", missing, "DIR", p.dir).Replace(tc.doc)
			_, err := Check([]byte(doc), noEnv)
			got := unjoin(err)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(got), len(tc.want), err)
			}
			for i, e := range got {
				if !strings.HasPrefix(e.Error(), tc.want[i]) {
					t.Errorf("problem %d:\n  %v\nwant prefix\n  %s", i, e, tc.want[i])
				}
				if tc.is != nil && !errors.Is(e, tc.is) {
					t.Errorf("%v is not %v", e, tc.is)
				}
			}
		})
	}
}

func TestCheckCRLFile(t *testing.T) {
	p := newTestPKI(t)
	der := filepath.Join(p.dir, "crl.der")
	blk, _ := pem.Decode(mustRead(t, p.crl))
	if err := os.WriteFile(der, blk.Bytes, 0o600); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]error{p.crl: nil, der: nil, p.ca: ErrBadCRL, p.junk: ErrBadCRL, filepath.Join(p.dir, "nope"): fs.ErrNotExist} {
		var e errs
		checkCRLFile(&e, "tls.client_auth.crl", file)
		err := errors.Join(e...)
		if (want == nil) != (err == nil) || want != nil && !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", filepath.Base(file), err, want)
		}
	}
	// The CRL field is found by its YAML key once it exists.
	type withCRL struct {
		CA  string `yaml:"ca"`
		CRL string `yaml:"crl"`
	}
	if got := stringField(&withCRL{CA: "a", CRL: "b"}, "crl"); got != "b" {
		t.Errorf("stringField = %q", got)
	}
	if got := stringField(&ClientAuth{CA: "a"}, "nope"); got != "" {
		t.Errorf("stringField of a missing key = %q", got)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadCheckedRefusesFIFO(t *testing.T) {
	_, err := LoadChecked("/dev/stdin")
	if !errors.Is(err, ErrNotRegular) && !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadChecked(/dev/stdin) = %v, want ErrNotRegular", err)
	}
}

func FuzzValidTopicFilter(f *testing.F) {
	for _, s := range []string{"replies/#", "a/+/b", "a#", "#/a", "+a", "", "a//b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidTopicFilter(s) != nil {
			return
		}
		for i, l := range strings.Split(s, "/") {
			if (strings.Contains(l, "#") && (l != "#" || i != strings.Count(s, "/"))) || (strings.Contains(l, "+") && l != "+") {
				t.Fatalf("accepted bad filter %q", s)
			}
		}
	})
}
