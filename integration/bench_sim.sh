#!/usr/bin/env bash
# Runs one edgeshim-sim scenario against a real mosquitto and a real
# edgeshim on loopback (ports 21883, 28443, admin 29090), reading
# edgeshim's CPU and memory from its /metrics. Not run by CI. Usage:
#   bash integration/bench_sim.sh integration/scenarios/FILE.yaml [edgeshim-sim flags...]
# A scenario's restart event may run 'eval "$EDGESHIM_RESTART"': it kills
# edgeshim with SIGKILL and starts it again with the same config.
# Other targets: nginx, run the sim directly with -url; Pushpin beside
# edgeshim: integration/bench_pushpin.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 SCENARIO.yaml [flags]"; exit 2; }
SCEN=$1; shift
W=$(mktemp -d)
cleanup() {
  [ -f "$W/edge.pid" ] && kill -9 "$(cat "$W/edge.pid")" 2>/dev/null || true
  kill $(jobs -p) 2>/dev/null || true
  sleep 0.5
  rm -rf "$W"
}
trap cleanup EXIT
export PATH=$PATH:/usr/sbin
command -v mosquitto >/dev/null || { echo "need mosquitto (apt-get install mosquitto)"; exit 1; }
ulimit -n 20000 2>/dev/null || true

go build -o "$W/edgeshim" ./cmd/edgeshim
go build -o "$W/sim" ./cmd/edgeshim-sim

cat > "$W/mosquitto.conf" <<CONF
listener 21883 127.0.0.1
allow_anonymous true
max_queued_messages 10000
log_dest stderr
log_type error
CONF
mosquitto -c "$W/mosquitto.conf" 2>"$W/mosquitto.log" &

od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$W/ticket-keys"
cat > "$W/edgeshim.yaml" <<CONF
listen: {https: "127.0.0.1:28443", admin: "127.0.0.1:29090"}
log: {level: warn}
data_dir: $W/data
tls:
  min_version: "1.2"
  session_tickets: {key_file: $W/ticket-keys}   # kept across a restart, as replicas share it
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
    telemetry: {path: "/devices/{device}/telemetry", topic: "devices/{device}/telemetry"}
    commands: {topic: "devices/{device}/commands"}
    presence: {topic: "devices/{device}/status"}
    session: {idle: 5m, max: 100000}
CONF
start_edge() {
  "$W/edgeshim" run -c "$W/edgeshim.yaml" >>"$W/edgeshim.log" 2>&1 &
  echo $! > "$W/edge.pid"
  disown
}
start_edge
for p in 21883 28443 29090; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
# The restart: SIGKILL, wait until the process is gone, start again; a
# start that fails (EADDRINUSE: right after a kill with thousands of
# connections the port can stay taken for a while) is retried every 0.2 s,
# as a supervisor would. Recovery time includes all of it.
cat > "$W/restart.sh" <<SH
old=\$(cat $W/edge.pid)
kill -9 \$old
while [ -d /proc/\$old ] && ! grep -q '^State:.*Z' /proc/\$old/status 2>/dev/null; do sleep 0.02; done
for i in \$(seq 300); do
  $W/edgeshim run -c $W/edgeshim.yaml >>$W/edgeshim.log 2>&1 &
  pid=\$!
  sleep 0.2
  if kill -0 \$pid 2>/dev/null; then echo \$pid > $W/edge.pid; echo "restart: up after \$i start(s)" >>$W/edgeshim.log; break; fi
  [ \$i = 1 ] && ss -tan "sport = :28443" | awk 'NR>1 {print \$1}' | sort | uniq -c >>$W/edgeshim.log
done
SH
export EDGESHIM_RESTART="sh $W/restart.sh"

"$W/sim" -scenario "$SCEN" -metrics http://127.0.0.1:29090/metrics "$@"
echo "--- edgeshim log (last lines):"; tail -5 "$W/edgeshim.log"; kill -0 "$(cat "$W/edge.pid")" 2>/dev/null && echo "edgeshim $(cat "$W/edge.pid") alive" || echo "edgeshim $(cat "$W/edge.pid") not running"
