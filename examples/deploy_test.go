package examples

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/config"
	"go.yaml.in/yaml/v3"
)

// drainDelay is shutdown.drain_delay's default, which edgeshim waits
// (still accepting) before its grace period starts.
const drainDelay = 5 * time.Second

func loadConfig(t *testing.T, data []byte) *config.Config {
	t.Helper()
	raw, err := config.Parse(data, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	c := raw.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDockerfile: the image has OCI labels with the version from the build
// argument, a HEALTHCHECK that needs nothing but the binary, exposes no
// port edgeshim does not serve by default, copies what exists, and runs a
// configuration with an absolute data_dir.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, drop comments.
	var lines []string
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			cur += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		lines = append(lines, cur+l)
		cur = ""
	}
	var final []string // the instructions of the last stage
	for _, l := range lines {
		if strings.HasPrefix(l, "FROM ") {
			final = nil
		}
		final = append(final, l)
	}
	joined := strings.Join(final, "\n")
	for _, label := range []string{"title", "description", "version=\"${VERSION}\"", "revision", "created", "licenses=\"Apache-2.0\"", "source"} {
		if !strings.Contains(joined, "org.opencontainers.image."+label) {
			t.Errorf("final stage lacks the OCI label org.opencontainers.image.%s", label)
		}
	}
	if !regexp.MustCompile(`(?m)^ARG VERSION`).MatchString(joined) {
		t.Error("final stage does not declare ARG VERSION (labels would see it empty)")
	}
	if !strings.Contains(strings.Join(lines, "\n"), `-X main.version=${VERSION}`) {
		t.Error("the build does not stamp main.version")
	}
	hc := regexp.MustCompile(`(?m)^HEALTHCHECK .*CMD \["/usr/local/bin/edgeshim", "health"`).FindString(joined)
	if hc == "" {
		t.Error(`HEALTHCHECK must run ["/usr/local/bin/edgeshim", "health", ...] in exec form (no shell in the image)`)
	}
	for _, l := range final {
		if strings.HasPrefix(l, "EXPOSE ") && strings.Contains(l, "9090") {
			t.Errorf("%q: the admin port binds 127.0.0.1 by default; exposing it misleads", l)
		}
		if f := strings.Fields(l); len(f) == 3 && f[0] == "COPY" {
			if _, err := os.Stat(filepath.Join("..", f[1])); err != nil {
				t.Errorf("%q: %v", l, err)
			}
		}
	}
	m := regexp.MustCompile(`(?m)^COPY (\S+) /etc/edgeshim/edgeshim.yaml$`).FindStringSubmatch(joined)
	if m == nil || !strings.Contains(joined, `CMD ["run", "-c", "/etc/edgeshim/edgeshim.yaml"]`) {
		t.Fatal("the image must carry the configuration its CMD runs")
	}
	data, err = os.ReadFile(filepath.Join("..", m[1]))
	if err != nil {
		t.Fatal(err)
	}
	if c := loadConfig(t, data); c.DataDir != "/var/lib/edgeshim" || !strings.Contains(joined, "/var/lib/edgeshim") {
		t.Errorf("the image's data_dir is %q, want the image's writable /var/lib/edgeshim", c.DataDir)
	}
}

// composeServiceKeys are the service keys of the Compose specification
// (compose-spec/schema/compose-spec.json) this check accepts.
var composeServiceKeys = []string{"build", "cap_add", "cap_drop", "command", "configs", "container_name", "depends_on",
	"deploy", "entrypoint", "env_file", "environment", "expose", "healthcheck", "image", "init", "labels", "logging",
	"mem_limit", "networks", "ports", "profiles", "read_only", "restart", "secrets", "security_opt", "stop_grace_period",
	"stop_signal", "sysctls", "tmpfs", "ulimits", "user", "volumes", "working_dir"}

// TestComposeFile: compose.yaml uses only Compose specification keys,
// mounts files that exist and volumes it declares, runs edgeshim with its
// health probe and a stop grace above its drain, keeps the broker off the
// host's ports, and its token file holds the documented token's hash.
func TestComposeFile(t *testing.T) {
	data, err := os.ReadFile("compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]map[string]any
		Volumes  map[string]any
		Networks map[string]any
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // top level: services, volumes, networks only
	if err := dec.Decode(&f); err != nil {
		t.Fatal(err)
	}
	for name, svc := range f.Services {
		for k := range svc {
			if !slices.Contains(composeServiceKeys, k) {
				t.Errorf("services.%s.%s is not a Compose service key", name, k)
			}
		}
		vols, _ := svc["volumes"].([]any)
		for _, v := range vols {
			src := strings.SplitN(v.(string), ":", 2)[0]
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join("compose", src)); err != nil {
					t.Errorf("services.%s mounts %s: %v", name, src, err)
				}
			} else if _, ok := f.Volumes[src]; !ok {
				t.Errorf("services.%s mounts volume %s, which volumes does not declare", name, src)
			}
		}
		nets, _ := svc["networks"].([]any)
		for _, n := range nets {
			if _, ok := f.Networks[n.(string)]; !ok {
				t.Errorf("services.%s joins network %v, which networks does not declare", name, n)
			}
		}
	}
	if _, ok := f.Services["mosquitto"]["ports"]; ok {
		t.Error("the broker publishes ports: it should face only edgeshim")
	}
	es := f.Services["edgeshim"]
	if es == nil {
		t.Fatal("no edgeshim service")
	}
	hc, _ := es["healthcheck"].(map[string]any)
	if test := fmt.Sprint(hc["test"]); !strings.HasPrefix(test, "[CMD /usr/local/bin/edgeshim health") {
		t.Errorf("healthcheck.test = %s, want the binary's health probe", test)
	}
	cfgData, err := os.ReadFile("compose/edgeshim.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := loadConfig(t, cfgData)
	grace, err := time.ParseDuration(fmt.Sprint(es["stop_grace_period"]))
	if err != nil || grace <= c.Shutdown.Grace.D()+drainDelay {
		t.Errorf("stop_grace_period %v must exceed shutdown.grace %s + drain_delay %s", es["stop_grace_period"], c.Shutdown.Grace, drainDelay)
	}
	if !path.IsAbs(c.DataDir) || !slices.ContainsFunc(es["volumes"].([]any), func(v any) bool { return strings.Contains(v.(string), ":"+c.DataDir) }) {
		t.Errorf("data_dir %q must be absolute and a volume", c.DataDir)
	}
	for _, b := range c.Bridges {
		if !strings.Contains(b.Upstream.URL, "mosquitto:1883") {
			t.Errorf("bridge upstream %s is not the compose broker", b.Upstream.URL)
		}
	}
	tokens := readTokens(t, "compose/tokens.yaml")
	if sum := sha256.Sum256([]byte("secret-d1")); tokens["d1"] != hex.EncodeToString(sum[:]) {
		t.Error("compose/tokens.yaml: d1's hash is not that of the documented token secret-d1")
	}
}

func readTokens(t *testing.T, file string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// k8sObject is a Kubernetes object as a generic map.
type k8sObject map[string]any

func (o k8sObject) get(keys ...string) any {
	var v any = o
	for _, k := range keys {
		m := asMap(v)
		if m == nil {
			return nil
		}
		v = m[k]
	}
	return v
}

// asMap returns v as a map: yaml.v3 decodes the maps nested in a
// k8sObject as k8sObject.
func asMap(v any) k8sObject {
	switch m := v.(type) {
	case k8sObject:
		return m
	case map[string]any:
		return k8sObject(m)
	}
	return nil
}

func (o k8sObject) str(keys ...string) string    { s, _ := o.get(keys...).(string); return s }
func (o k8sObject) list(keys ...string) []any    { l, _ := o.get(keys...).([]any); return l }
func (o k8sObject) obj(keys ...string) k8sObject { return asMap(o.get(keys...)) }

// TestKubernetesManifests checks what kubeconform cannot here (it needs
// schemas from the network) and what a schema would not: the objects are
// well-formed for their kinds, the Deployment's probes, ports, volumes and
// grace period fit edgeshim's configuration, the Service and the
// PodDisruptionBudget select its pods, and the shared ticket key file and
// the token file come from the Secret.
func TestKubernetesManifests(t *testing.T) {
	wantAPI := map[string]string{"Deployment": "apps/v1", "Service": "v1", "ConfigMap": "v1", "Secret": "v1",
		"PodDisruptionBudget": "policy/v1", "Kustomization": "kustomize.config.k8s.io/v1beta1"}
	byKind := map[string][]k8sObject{}
	files, _ := filepath.Glob("kubernetes/*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var o k8sObject
			if err := dec.Decode(&o); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			kind := o.str("kind")
			if want, ok := wantAPI[kind]; !ok || o.str("apiVersion") != want {
				t.Errorf("%s: kind %q apiVersion %q, want one of %v", file, kind, o.str("apiVersion"), wantAPI)
			}
			if kind != "Kustomization" && o.str("metadata", "name") == "" {
				t.Errorf("%s: a %s without metadata.name", file, kind)
			}
			byKind[kind] = append(byKind[kind], o)
		}
	}
	one := func(kind string) k8sObject {
		if len(byKind[kind]) != 1 {
			t.Fatalf("%d %s objects, want 1", len(byKind[kind]), kind)
		}
		return byKind[kind][0]
	}
	kust := one("Kustomization")
	for _, file := range files {
		if b := filepath.Base(file); b != "kustomization.yaml" && !slices.Contains(kust.list("resources"), any(b)) {
			t.Errorf("kustomization.yaml does not list %s", b)
		}
	}

	dep := one("Deployment")
	pod := dep.obj("spec", "template", "spec")
	podLabels := dep.obj("spec", "template", "metadata", "labels")
	selects := func(what string, sel k8sObject) {
		if len(sel) == 0 {
			t.Errorf("%s selects nothing", what)
		}
		for k, v := range sel {
			if podLabels[k] != v {
				t.Errorf("%s selects %s=%v, which the pods do not carry", what, k, v)
			}
		}
	}
	selects("Deployment spec.selector", dep.obj("spec", "selector", "matchLabels"))
	if len(pod.list("containers")) != 1 {
		t.Fatal("want one container")
	}
	ctr := asMap(pod.list("containers")[0])
	ports := map[string]string{} // name -> "port/proto"
	for _, p := range ctr.list("ports") {
		p := asMap(p)
		ports[p.str("name")] = fmt.Sprintf("%v/%s", p.get("containerPort"), p.str("protocol"))
	}
	for name, want := range map[string]string{"https": "8443/TCP", "h3": "8443/UDP", "admin": "9090/TCP"} {
		if ports[name] != want {
			t.Errorf("container port %s = %q, want %s", name, ports[name], want)
		}
	}
	if ctr.str("readinessProbe", "httpGet", "path") != "/readyz" || ctr.str("readinessProbe", "httpGet", "port") != "admin" {
		t.Errorf("readinessProbe must GET /readyz on the admin port: %v", ctr.get("readinessProbe"))
	}
	if ctr.str("livenessProbe", "httpGet", "path") != "/healthz" {
		t.Errorf("livenessProbe must GET /healthz (not /readyz: a draining pod is alive): %v", ctr.get("livenessProbe"))
	}
	if pod.get("securityContext", "runAsNonRoot") != true || ctr.get("securityContext", "readOnlyRootFilesystem") != true ||
		ctr.get("securityContext", "allowPrivilegeEscalation") != false {
		t.Error("the pod must run as non-root with a read-only root and no privilege escalation")
	}

	// The configuration it runs.
	args := ctr.list("args")
	if len(args) != 3 || args[0] != "run" || args[1] != "-c" {
		t.Fatalf("args %v, want run -c FILE", args)
	}
	cm := one("ConfigMap")
	cfgFile := args[2].(string)
	mounts := map[string]string{} // mountPath -> volume
	for _, m := range ctr.list("volumeMounts") {
		m := asMap(m)
		mounts[m.str("mountPath")] = m.str("name")
	}
	volumes := map[string]k8sObject{}
	for _, v := range pod.list("volumes") {
		v := asMap(v)
		volumes[v.str("name")] = v
	}
	for mp, name := range mounts {
		if volumes[name] == nil {
			t.Errorf("volumeMount %s names no volume %q", mp, name)
		}
	}
	// volumeFor returns the volume a file path lives in and the file's
	// name inside it.
	volumeFor := func(file string) (k8sObject, string) {
		dir, base := path.Split(file)
		v := volumes[mounts[strings.TrimSuffix(dir, "/")]]
		if v == nil {
			t.Errorf("%s is in no mounted volume", file)
		}
		return v, base
	}
	if v, key := volumeFor(cfgFile); v != nil {
		if v.str("configMap", "name") != cm.str("metadata", "name") || cm.str("data", key) == "" {
			t.Fatalf("%s is not the ConfigMap's %s", cfgFile, key)
		}
	}
	c := loadConfig(t, []byte(cm.str("data", path.Base(cfgFile))))
	if c.Listen.Admin != ":9090" {
		t.Errorf("listen.admin %q: probes and Prometheus reach the pod's IP, want :9090", c.Listen.Admin)
	}
	if v := volumes[mounts[c.DataDir]]; !path.IsAbs(c.DataDir) || v == nil || v.get("emptyDir") == nil && v.get("persistentVolumeClaim") == nil {
		t.Errorf("data_dir %q must be absolute and a writable volume", c.DataDir)
	}
	grace, _ := pod.get("terminationGracePeriodSeconds").(int)
	if time.Duration(grace)*time.Second <= c.Shutdown.Grace.D()+drainDelay {
		t.Errorf("terminationGracePeriodSeconds %d must exceed shutdown.grace %s + drain_delay %s", grace, c.Shutdown.Grace, drainDelay)
	}
	secret := one("Secret")
	fromSecret := func(file, what string) {
		v, key := volumeFor(file)
		if v == nil {
			return
		}
		switch name := v.str("secret", "secretName"); name {
		case secret.str("metadata", "name"):
			if secret.str("stringData", key) == "" {
				t.Errorf("%s: the Secret %s has no %s", what, name, key)
			}
		case "edgeshim-tls": // created by cert-manager or kubectl create secret tls
			if key != "tls.crt" && key != "tls.key" {
				t.Errorf("%s: a kubernetes.io/tls Secret has tls.crt and tls.key, not %s", what, key)
			}
		default:
			t.Errorf("%s (%s) does not come from a Secret", what, file)
		}
	}
	if c.TLS.SessionTickets.KeyFile == "" {
		t.Error("replicas must share tls.session_tickets.key_file")
	}
	fromSecret(c.TLS.SessionTickets.KeyFile, "tls.session_tickets.key_file")
	for i, cf := range c.TLS.Certs {
		fromSecret(cf.Cert, fmt.Sprintf("tls.certs[%d].cert", i))
		fromSecret(cf.Key, fmt.Sprintf("tls.certs[%d].key", i))
	}
	for name, b := range c.Bridges {
		if b.Identity.Tokens != "" {
			fromSecret(b.Identity.Tokens, "bridges."+name+".identity.tokens")
		}
	}

	var lb k8sObject
	for _, svc := range byKind["Service"] {
		selects("Service "+svc.str("metadata", "name"), svc.obj("spec", "selector"))
		for _, p := range svc.list("spec", "ports") {
			p := asMap(p)
			if _, ok := ports[p.str("targetPort")]; !ok {
				t.Errorf("Service %s targets port %q, which the container does not name", svc.str("metadata", "name"), p.str("targetPort"))
			}
		}
		if svc.str("spec", "type") == "LoadBalancer" {
			lb = svc
		}
	}
	if lb == nil {
		t.Fatal("no LoadBalancer Service")
	}
	protos := map[string]bool{}
	for _, p := range lb.list("spec", "ports") {
		p := asMap(p)
		if p.get("port") == 443 {
			protos[p.str("protocol")] = true
		}
	}
	if !protos["TCP"] || !protos["UDP"] {
		t.Errorf("the LoadBalancer must carry 443 over TCP and UDP (HTTP/3): %v", protos)
	}
	pdb := one("PodDisruptionBudget")
	selects("PodDisruptionBudget", pdb.obj("spec", "selector", "matchLabels"))
	if pdb.get("spec", "minAvailable") == nil && pdb.get("spec", "maxUnavailable") == nil {
		t.Error("the PodDisruptionBudget sets neither minAvailable nor maxUnavailable")
	}
}

// TestSystemdUnit: the unit runs edgeshim with its state in
// StateDirectory (data_dir absolute), confined, with a stop timeout above
// the drain; systemd-analyze verify runs in integration/deploy_test.go.
func TestSystemdUnit(t *testing.T) {
	data, err := os.ReadFile("systemd/edgeshim.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			keys[k] = append(keys[k], v)
		}
	}
	for k, want := range map[string]string{
		"DynamicUser": "yes", "StateDirectory": "edgeshim", "WorkingDirectory": "/var/lib/edgeshim", "NoNewPrivileges": "yes",
		"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
		"AmbientCapabilities": "CAP_NET_BIND_SERVICE", "LimitNOFILE": "1048576", "KillSignal": "SIGTERM",
	} {
		if !slices.Contains(keys[k], want) {
			t.Errorf("%s=%v, want %s", k, keys[k], want)
		}
	}
	if len(keys["ExecStart"]) != 1 || !strings.HasPrefix(keys["ExecStart"][0], "/usr/local/bin/edgeshim run -c /etc/edgeshim/") {
		t.Errorf("ExecStart=%v", keys["ExecStart"])
	}
	if len(keys["ExecReload"]) != 1 || !strings.Contains(keys["ExecReload"][0], "-HUP $MAINPID") {
		t.Errorf("ExecReload=%v, want SIGHUP (reloads certificates and ticket keys)", keys["ExecReload"])
	}
	stop, err := time.ParseDuration(strings.Join(keys["TimeoutStopSec"], ""))
	if err != nil || stop <= 30*time.Second+drainDelay {
		t.Errorf("TimeoutStopSec=%v must exceed shutdown.grace (30s) + drain_delay (%s)", keys["TimeoutStopSec"], drainDelay)
	}
}
