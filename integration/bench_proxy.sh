#!/usr/bin/env bash
# Compares edgeshim, nginx and HAProxy as TLS-terminating reverse proxies in
# front of the same small backend, on loopback, in one run:
#   - requests/s and p99 with keep-alive (wrk),
#   - requests/s and p99 with a new TLS connection per request, resumed from
#     a session cache (cmd/edgeshim-sim, model newconn in a closed loop),
# and prints edgeshim's ratio to each. Not run by CI. Usage:
#   bash integration/bench_proxy.sh [seconds-per-measurement]
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-10}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.5; rm -rf "$W"' EXIT
for t in nginx haproxy wrk; do command -v $t >/dev/null || [ -x /usr/sbin/$t ] || { echo "need $t (apt-get install nginx haproxy wrk)"; exit 1; }; done
export PATH=$PATH:/usr/sbin

go build -o "$W/edgeshim" ./cmd/edgeshim
go build -o "$W/sim" ./cmd/edgeshim-sim
# tlsload ADDR [-tls12]: 32 devices, each a new resumed TLS connection per
# request in a closed loop, for D seconds; prints "REQ req/s  p99 D ...".
tlsload() {
  local tls=1.3; [ "${2:-}" = -tls12 ] && tls=1.2
  "$W/sim" -brief -progress off -url "https://$1/" -devices 32 -ramp 100000 -interval 0 -duration "${D}s" -tls $tls
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
cat "$W/cert.pem" "$W/key.pem" > "$W/both.pem"

# The backend: nginx answering 200 "ok" from memory.
cat > "$W/backend.conf" <<CONF
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:18080; keepalive_requests 100000; location / { return 200 "ok\n"; } } }
CONF
nginx -c "$W/backend.conf" -e "$W/backend.err" & 

# edgeshim
cat > "$W/edgeshim.yaml" <<CONF
listen: {https: "127.0.0.1:18443", admin: "off"}
log: {level: warn}
data_dir: $W/data
tls: {certs: [{cert: $W/cert.pem, key: $W/key.pem}]}
limits:
  max_conns: 100000
  per_ip: {max_conns: 100000, rate: 1000000, burst: 1000000}
  handshake: {rate: 100000, burst: 100000}
routes: [{path: /, proxy: {backends: ["http://127.0.0.1:18080"], max_idle_conns: 256}}]
CONF
"$W/edgeshim" run -c "$W/edgeshim.yaml" 2>"$W/edgeshim.log" &
PID_edgeshim=$!

# nginx as TLS proxy, one worker per core, tickets and a session cache
cat > "$W/nginx.conf" <<CONF
worker_processes auto; daemon off; pid $W/nginx.pid; error_log $W/nginx.err;
events { worker_connections 8192; }
http {
  access_log off;
  upstream be { server 127.0.0.1:18080; keepalive 256; }
  server {
    listen 127.0.0.1:18444 ssl http2;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_session_cache shared:SSL:10m; ssl_session_tickets on;
    keepalive_requests 100000;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -c "$W/nginx.conf" -e "$W/nginx.err" 2>/dev/null &
PID_nginx=$!

# HAProxy as TLS proxy
cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 2
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:18445 ssl crt $W/both.pem alpn h2,http/1.1
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:18080
CONF
haproxy -f "$W/haproxy.cfg" -db 2>"$W/haproxy.err" &
PID_haproxy=$!

for p in 18080 18443 18444 18445; do
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done

# cpu_ticks PID: utime+stime (clock ticks) of the process and its children
# (nginx's workers).
cpu_ticks() {
  local t=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat)))
  done
  echo $t
}
HZ=$(getconf CLK_TCK)
# us_per_req TICKS REQS: CPU microseconds per request.
us_per_req() { awk -v t="$1" -v r="$2" -v hz="$HZ" 'BEGIN { if (r > 0) printf "%.0f", t * 1e6 / hz / r; else print "n/a" }'; }

declare -A KA KP NC NP KU NU N12 NU12
for name in edgeshim:18443 nginx:18444 haproxy:18445; do
  n=${name%%:*}; p=${name##*:}; pid_var=PID_$n; pid=${!pid_var}
  t0=$(cpu_ticks $pid)
  out=$(wrk -t2 -c64 -d${D}s --latency "https://127.0.0.1:$p/" 2>&1)
  t1=$(cpu_ticks $pid)
  KA[$n]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  KP[$n]=$(echo "$out" | awk '$1=="99%" {print $2}')
  KU[$n]=$(us_per_req $((t1 - t0)) "$(echo "$out" | awk '/requests in/ {print $1}')")
  out=$(tlsload 127.0.0.1:$p)
  t2=$(cpu_ticks $pid)
  NC[$n]=$(echo "$out" | awk '{print $1}')
  NP[$n]=$(echo "$out" | awk '{print $4}')
  NU[$n]=$(us_per_req $((t2 - t1)) "$(awk -v r="${NC[$n]}" -v d="$D" 'BEGIN { print r * d }')")
  out12=$(tlsload 127.0.0.1:$p -tls12)
  t3=$(cpu_ticks $pid)
  N12[$n]=$(echo "$out12" | awk '{print $1}')
  NU12[$n]=$(us_per_req $((t3 - t2)) "$(awk -v r="${N12[$n]}" -v d="$D" 'BEGIN { print r * d }')")
  echo "$n: keep-alive ${KA[$n]} req/s p99 ${KP[$n]} (${KU[$n]} us CPU/req); new TLS conn (resumed) $out (${NU[$n]} us CPU/req); TLS 1.2 $out12 (${NU12[$n]} us CPU/req)"
done
echo
printf "%-10s %16s %12s %8s %22s %12s %8s %14s %8s\n" proxy "keep-alive r/s" "p99" "us/req" "new-conn+resume r/s" "p99" "us/req" "TLS1.2 r/s" "us/req"
for n in edgeshim nginx haproxy; do
  printf "%-10s %16s %12s %8s %22s %12s %8s %14s %8s\n" $n "${KA[$n]}" "${KP[$n]}" "${KU[$n]}" "${NC[$n]}" "${NP[$n]}" "${NU[$n]}" "${N12[$n]}" "${NU12[$n]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "edgeshim / nginx:   keep-alive $(ratio "${KA[edgeshim]}" "${KA[nginx]}"), new-conn+resume $(ratio "${NC[edgeshim]}" "${NC[nginx]}"), TLS 1.2 $(ratio "${N12[edgeshim]}" "${N12[nginx]}")"
echo "edgeshim / haproxy: keep-alive $(ratio "${KA[edgeshim]}" "${KA[haproxy]}"), new-conn+resume $(ratio "${NC[edgeshim]}" "${NC[haproxy]}"), TLS 1.2 $(ratio "${N12[edgeshim]}" "${N12[haproxy]}")"
