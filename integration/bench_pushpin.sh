#!/usr/bin/env bash
# Runs the same fleet against edgeshim (with mosquitto) and Pushpin side by
# side, alternately, RUNS times each, on loopback, and prints the medians.
# Each run starts its target fresh (its memory baseline is the empty
# process) and stops it after. Not run by CI. Usage:
#   bash integration/bench_pushpin.sh            # both parts
#   PARTS=a bash integration/bench_pushpin.sh    # only the long-poll fleet
#   OUT=DIR keeps every run's report (text and -json) in DIR
# (a) held long-polls (wait=55, integration/scenarios/longpoll-55.yaml with
#     LP_DEVICES devices for LP_DURATION, started at LP_RAMP per second,
#     commands at 100/s): KiB per held
#     device, CPU per poll and per device, publish→device p50/p99;
# (b) new polls at each of RATES per second for 20 s: a new resumed TLS 1.2
#     connection per poll, each held up to B_WAIT s (so RATE*B_WAIT
#     devices, started at RATE/s), and over the 20 s after the ramp as
#     many commands as devices, each to a random device that has been
#     online (not one to every device: a device that never came online
#     would stop that): share delivered, refusals, handshake and
#     publish→device p99.
# Pushpin has no at-least-once: a command published while its device is
# between two polls is lost, and the report counts it as lost.
# edgeshim: ports 21883 (mosquitto), 28443, admin 29090; Pushpin: 27999,
# 27443 (TLS), publish 27561, the sim's GRIP origin 27080.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-2}
PARTS=${PARTS:-ab}
LP_DEVICES=${LP_DEVICES:-4000}
LP_DURATION=${LP_DURATION:-50s}
LP_RAMP=${LP_RAMP:-}          # devices started per second; empty: the scenario's 500
RATES=${RATES:-500 1000 2000}
B_WAIT=${B_WAIT:-4}
W=$(mktemp -d)
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  PIDS=()
}
cleanup() { stop_all; rm -rf "$W"; }
trap cleanup EXIT
export PATH=$PATH:/usr/sbin
for b in mosquitto pushpin condure pushpin-proxy pushpin-handler; do
  command -v $b >/dev/null || { echo "need $b (apt-get install mosquitto pushpin)"; exit 1; }
done
ulimit -n 20000 2>/dev/null || true
# A port still taken (a stale server) would be measured instead: refuse.
port_free() { for p in "$@"; do ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo "port $p already in use"; exit 1; }; done; }
wait_port() { for _ in $(seq 150); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo "port $1 not up"; exit 1; }

go build -o "$W/edgeshim" ./cmd/edgeshim
go build -o "$W/sim" ./cmd/edgeshim-sim

cat > "$W/mosquitto.conf" <<CONF
listener 21883 127.0.0.1
allow_anonymous true
max_queued_messages 10000
log_dest stderr
log_type error
CONF
cat > "$W/edgeshim.yaml" <<CONF
listen: {https: "127.0.0.1:28443", admin: "127.0.0.1:29090"}
log: {level: warn}
data_dir: $W/data
tls: {min_version: "1.2"}
limits:
  max_conns: 100000
  per_ip: {max_conns: 20000, rate: 5000, burst: 5000}
  handshake: {rate: 3000, burst: 6000, queue_timeout: 2s}
  retry_after: {min: 1s, max: 10s}
routes: [{path: /devices/, bridge: fleet}]
bridges:
  fleet:
    upstream: {url: "mqtt://127.0.0.1:21883", session_expiry: 1h, keepalive: 60s, reconnect_rate: 5000}
    identity: {from: path, allow_unauthenticated: true}
    poll: {path: "/devices/{device}/commands", max_wait: 60s}
    commands: {topic: "devices/{device}/commands"}
    session: {idle: 5m, max: 100000}
CONF
# Pushpin unprivileged from its own directory: runtime files, logs and the
# TLS certificate (condure reads runner/certs/default_PORT.crt/.key, and
# NAME.crt for SNI NAME) stay in $W/pp.
mkdir -p "$W/pp/runner/certs" "$W/pp/run" "$W/pp/log"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$W/pp/runner/certs/localhost.key" -out "$W/pp/runner/certs/localhost.crt" 2>/dev/null
cp "$W/pp/runner/certs/localhost.key" "$W/pp/runner/certs/default_27443.key"
cp "$W/pp/runner/certs/localhost.crt" "$W/pp/runner/certs/default_27443.crt"
cat > "$W/pp/pushpin.conf" <<CONF
[global]
include={libdir}/internal.conf
rundir=$W/pp/run
ipc_prefix=bench-
port_offset=0
stats_connection_ttl=120
[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:27999
https_ports=127.0.0.1:27443
logdir=$W/pp/log
log_level=1
client_buffer_size=8192
client_maxconn=19000
[proxy]
routesfile=routes
zurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in
zurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream
zurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out
sig_key=bench-not-secret
updates_check=off
[handler]
push_in_spec=ipc://$W/pp/run/push-in
push_in_sub_specs=ipc://$W/pp/run/push-in-sub
push_in_http_addr=127.0.0.1
push_in_http_port=27561
stats_spec=ipc://{rundir}/{ipc_prefix}stats
command_spec=ipc://$W/pp/run/command
message_rate=100000
message_hwm=200000
CONF
echo '* 127.0.0.1:27080' > "$W/pp/routes"

start_edgeshim() {
  rm -rf "$W/data"
  port_free 21883 28443 29090
  mosquitto -c "$W/mosquitto.conf" 2>>"$W/mosquitto.log" & PIDS+=($!)
  wait_port 21883
  "$W/edgeshim" run -c "$W/edgeshim.yaml" >>"$W/edgeshim.log" 2>&1 & PIDS+=($!)
  wait_port 28443; wait_port 29090
}
start_pushpin() {
  port_free 27999 27443 27561 27080
  pushpin --config "$W/pp/pushpin.conf" >>"$W/pp/out.log" 2>&1 & PIDS+=($!)
  PPPID=$!
  wait_port 27443; wait_port 27561
}
EDGE_URL="https://127.0.0.1:28443/devices/{device}/commands"
PP_URL="https://127.0.0.1:27443/devices/{device}/commands"
PP_FLAGS=(-target pushpin -broker "" -grip-origin 127.0.0.1:27080 -pushpin-publish http://127.0.0.1:27561/publish/)
# one NAME TARGET FLAGS...: one run against a fresh TARGET, report in $W/NAME.json
one() {
  local name=$1 target=$2; shift 2
  if [ "$target" = edgeshim ]; then
    start_edgeshim
    "$W/sim" -progress off -json "$W/$name.json" -url "$EDGE_URL" -metrics http://127.0.0.1:29090/metrics "$@" >"$W/$name.txt" 2>>"$W/sim.log" || true
  else
    start_pushpin
    "$W/sim" -progress off -json "$W/$name.json" -url "$PP_URL" -pid "$PPPID" "${PP_FLAGS[@]}" "$@" >"$W/$name.txt" 2>>"$W/sim.log" || true
  fi
  stop_all
  echo "$(date -u +%T) done $name" >&2
}

# Alternately: each scenario against edgeshim, then Pushpin, RUNS times.
for i in $(seq "$RUNS"); do
  if [[ $PARTS == *a* ]]; then
    for t in edgeshim pushpin; do
      one "a-$t-$i" $t -scenario integration/scenarios/longpoll-55.yaml -devices "$LP_DEVICES" -duration "$LP_DURATION" ${LP_RAMP:+-ramp "$LP_RAMP"}
    done
  fi
  if [[ $PARTS == *b* ]]; then
    for r in $RATES; do
      for t in edgeshim pushpin; do
        b=(-model newconn -wait "$B_WAIT" -tls 1.2 -devices $((r * B_WAIT)) -ramp "$r" -duration $((20 + B_WAIT))s -sources 8
           -rate $((r * B_WAIT / 20)) -commands-start "${B_WAIT}s" -late 5s)
        [ $t = edgeshim ] && b+=(-broker mqtt://127.0.0.1:21883)
        one "b$r-$t-$i" $t "${b[@]}"
      done
    done
  fi
done

python3 - "$W" <<'PY'
import json, glob, os, statistics, sys
w = sys.argv[1]
def load(pat):
    out = []
    for f in sorted(glob.glob(os.path.join(w, pat))):
        try: out.append(json.load(open(f)))
        except Exception as e: print("unreadable", f, e)
    return out
def med(rs, f):
    v = [f(r) for r in rs]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else float("nan")
def srv(r, k): return (r.get("server") or {}).get(k)
for t in ("edgeshim", "pushpin"):
    rs = load(f"a-{t}-*.json")
    if not rs: continue
    print(f"(a) long-poll wait=55, {t}, {len(rs)} runs, medians: held {med(rs, lambda r: r['online_at_end']):.0f} of {rs[0]['devices']}, "
          f"{med(rs, lambda r: srv(r, 'kib_per_device')):.1f} KiB per held device, "
          f"CPU {med(rs, lambda r: srv(r, 'cpu_per_poll_us')):.0f} us per poll, {med(rs, lambda r: srv(r, 'cpu_per_device_us_per_s')):.1f} us/s per device, "
          f"publish->device p50 {med(rs, lambda r: r['latency']['publish_to_device']['p50_ms']):.1f} ms p99 {med(rs, lambda r: r['latency']['publish_to_device']['p99_ms']):.1f} ms, "
          f"delivered {med(rs, lambda r: r['commands']['delivered']):.0f} of {med(rs, lambda r: r['commands']['published']):.0f}, lost {med(rs, lambda r: r['commands']['lost']):.0f}")
for r_ in sorted({int(os.path.basename(f).split('-')[0][1:]) for f in glob.glob(os.path.join(w, "b*-*.json"))}):
    for t in ("edgeshim", "pushpin"):
        rs = load(f"b{r_}-{t}-*.json")
        if not rs: continue
        share = lambda r: 100.0 * r['commands']['delivered'] / r['commands']['published'] if r['commands']['published'] else 0.0
        ref = {}
        for r in rs:
            for k, v in (r.get("refusals") or {}).items(): ref.setdefault(k, []).append(v)
        refs = ", ".join(f"{k} {statistics.median(v + [0] * (len(rs) - len(v))):.0f}" for k, v in sorted(ref.items())) or "none"
        print(f"(b) {r_} new polls/s, {t}, {len(rs)} runs, medians: {med(rs, lambda r: r['polls_per_second']):.0f} polls/s, "
              f"delivered {med(rs, share):.1f}% ({med(rs, lambda r: r['commands']['delivered']):.0f} of {med(rs, lambda r: r['commands']['published']):.0f}, lost {med(rs, lambda r: r['commands']['lost']):.0f}), "
              f"refusals: {refs}; handshake p99 {med(rs, lambda r: r['latency']['handshake']['p99_ms']):.1f} ms, "
              f"publish->device p99 {med(rs, lambda r: r['latency']['publish_to_device']['p99_ms']):.1f} ms, resumed {100*med(rs, lambda r: r['resumption_rate']):.0f}%, "
              f"CPU {med(rs, lambda r: srv(r, 'cpu_per_poll_us')):.0f} us per poll")
PY
echo "--- sim log (last lines):"; tail -4 "$W/sim.log"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$W"/*.json "$W"/*.txt "$W/sim.log" "$OUT"/ && echo "reports in $OUT"; fi
