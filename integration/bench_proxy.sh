#!/usr/bin/env bash
# Compares edgeshim, nginx and HAProxy as TLS-terminating reverse proxies in
# front of the same small backend, on loopback, in one run:
#   - HTTP/1.1 keep-alive (wrk), HTTP/2 keep-alive (h2load -m 10),
#   - a new TLS 1.3 / TLS 1.2 connection per request, resumed from a session
#     cache (cmd/edgeshim-sim, model newconn in a closed loop), offering the classic groups devices offer
#     (X25519, P-256); the post-quantum hybrid X25519MLKEM768 only as a
#     separate edgeshim row (OpenSSL 3.0 proxies cannot do it),
# with CPU microseconds per request of each proxy (utime+stime from
# /proc/PID/stat) and edgeshim's ratio to each. Every proxy is configured
# for TLS 1.2 and 1.3 and checked before measuring: the version, the key
# exchange group and resumption it negotiates with openssl s_client are
# printed, and the run is refused when they differ between proxies. The
# proxies run alternately, ROUNDS times (default 2); medians are reported.
# Not run by CI. Usage:
#   ROUNDS=3 bash integration/bench_proxy.sh [seconds-per-measurement]
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-10}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.5; rm -rf "$W"' EXIT
ROUNDS=${ROUNDS:-2}
for t in nginx haproxy wrk h2load openssl; do command -v $t >/dev/null || [ -x /usr/sbin/$t ] || { echo "need $t (apt-get install nginx haproxy wrk)"; exit 1; }; done
export PATH=$PATH:/usr/sbin
# Every proxy gets the same backend idle-connection capacity in total:
# edgeshim's max_idle_conns (one pool per process), nginx's keepalive per
# worker times its workers, HAProxy's pool-max-conn (per server, all
# threads). Under h2load's 640 streams a smaller pool redials more.
IDLE=${IDLE:-512}
NGX_WORKERS=$(nproc)
echo "backend idle connections per proxy: $IDLE (edgeshim max_idle_conns $IDLE; nginx $NGX_WORKERS workers x keepalive $((IDLE / NGX_WORKERS)); haproxy pool-max-conn $IDLE)"

go build -o "$W/edgeshim" ./cmd/edgeshim
go build -o "$W/sim" ./cmd/edgeshim-sim
go build -o "$W/h3load" ./integration/h3load
# tlsload ADDR [sim flags]: 32 devices, each a new resumed TLS connection per
# request in a closed loop, for D seconds, offering X25519 and P-256 (-pq:
# the hybrid); prints "REQ req/s  p99 D  resumed P%  errors N".
tlsload() {
  local addr=$1; shift
  "$W/sim" -brief -progress off -url "https://$addr/" -devices 32 -ramp 100000 -interval 0 -duration "${D}s" "$@"
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
access_log: {enabled: false} # nginx and HAProxy run without one too
data_dir: $W/data
tls: {certs: [{cert: $W/cert.pem, key: $W/key.pem}]}
limits:
  max_conns: 100000
  per_ip: {max_conns: 100000, rate: 1000000, burst: 1000000}
  handshake: {rate: 100000, burst: 100000}
routes: [{path: /, proxy: {backends: ["http://127.0.0.1:18080"], max_idle_conns: $IDLE}}]
CONF
"$W/edgeshim" run -c "$W/edgeshim.yaml" 2>"$W/edgeshim.log" &
PID_edgeshim=$!
# A second edgeshim with HTTP/3 on (its Alt-Svc header would tax the rows
# above) for the HTTP/3 row, beside HTTP/2 on the same instance.
sed -e 's/18443", admin/18446", http3: true, admin/' -e "s|data_dir: .*|data_dir: $W/data3|" "$W/edgeshim.yaml" > "$W/edgeshim3.yaml"
"$W/edgeshim" run -c "$W/edgeshim3.yaml" 2>"$W/edgeshim3.log" &
PID_edgeshim3=$!

# nginx as TLS proxy, one worker per core, tickets and a session cache
cat > "$W/nginx.conf" <<CONF
worker_processes $NGX_WORKERS; daemon off; pid $W/nginx.pid; error_log $W/nginx.err;
events { worker_connections 8192; }
http {
  access_log off;
  upstream be { server 127.0.0.1:18080; keepalive $((IDLE / NGX_WORKERS)); }
  server {
    listen 127.0.0.1:18444 ssl http2;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;   # nginx 1.22's default has no TLS 1.3
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
  bind 127.0.0.1:18445 ssl crt $W/both.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:18080 pool-max-conn $IDLE
CONF
haproxy -f "$W/haproxy.cfg" -db 2>"$W/haproxy.err" &
PID_haproxy=$!

for p in 18080 18443 18444 18445 18446; do
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

# tls_probe PORT VERSION: "TLSv1.x group resumed|new" from two openssl
# s_client handshakes offering X25519 only, the second resuming the first's
# session. (P-256 too: a TLS 1.2 ECDSA P-256 signature needs it offered.)
tls_probe() {
  local sess="$W/sess.$1.$2" out1 out2 proto group
  # A whole request and its answer, so that TLS 1.3 tickets (sent after
  # the handshake) are read before s_client ends.
  local req='GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'
  out1=$(printf "$req" | timeout 10 openssl s_client -connect 127.0.0.1:$1 -servername localhost -$2 -groups X25519:P-256 -ign_eof -sess_out "$sess" 2>&1 || true)
  out2=$(printf "$req" | timeout 10 openssl s_client -connect 127.0.0.1:$1 -servername localhost -$2 -groups X25519:P-256 -ign_eof -sess_in "$sess" 2>&1 || true)
  proto=$(echo "$out1" | awk -F': *' '/^ *Protocol *:/ {print $2; exit}')
  [ -n "$proto" ] || proto=$(echo "$out1" | awk '/^New, / {print $2; exit}' | tr -d ,)
  group=$(echo "$out1" | awk -F': *' '/Server Temp Key/ {print $2; exit}' | cut -d, -f1)
  if echo "$out2" | grep -q '^Reused'; then echo "$proto $group resumed"; else echo "$proto $group new"; fi
}
ref=""
for name in edgeshim:18443 nginx:18444 haproxy:18445; do
  n=${name%%:*}; p=${name##*:}
  got="$(tls_probe $p tls1_3) / $(tls_probe $p tls1_2)"
  echo "$n: TLS 1.3 probe: ${got% / *}; TLS 1.2 probe: ${got#* / }"
  [ -z "$ref" ] && ref=$got
  if [ "$got" != "$ref" ] || [[ "$got" != "TLSv1.3 X25519 resumed / TLSv1.2 X25519 resumed" ]]; then
    echo "refused: $n negotiates '$got', want every proxy at 'TLSv1.3 X25519 resumed / TLSv1.2 X25519 resumed'"; exit 1
  fi
done
echo

# measure NAME PORT PIDVAR ROUND: one round of every row for one proxy.
declare -A R
measure() {
  local n=$1 p=$2 pid=$3 r=$4 out t0 t1 reqs
  t0=$(cpu_ticks $pid)
  out=$(wrk -t2 -c64 -d${D}s --latency "https://127.0.0.1:$p/" 2>&1)
  t1=$(cpu_ticks $pid)
  R[$n,ka,rps,$r]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  R[$n,ka,us,$r]=$(us_per_req $((t1 - t0)) "$(echo "$out" | awk '/requests in/ {print $1}')")
  t0=$(cpu_ticks $pid)
  out=$(h2load -c 64 -m 10 -t 2 -D ${D} "https://127.0.0.1:$p/" 2>&1)
  t1=$(cpu_ticks $pid)
  reqs=$(echo "$out" | awk '/^requests:/ {print $8}')
  R[$n,h2,rps,$r]=$(echo "$out" | awk '/^finished in/ {print $4}')
  R[$n,h2,us,$r]=$(us_per_req $((t1 - t0)) "$reqs")
  t0=$(cpu_ticks $pid)
  out=$(tlsload 127.0.0.1:$p)
  t1=$(cpu_ticks $pid)
  R[$n,n13,rps,$r]=$(echo "$out" | awk '{print $1}')
  R[$n,n13,us,$r]=$(us_per_req $((t1 - t0)) "$(awk -v r="${R[$n,n13,rps,$r]}" -v d="$D" 'BEGIN { print r * d }')")
  echo "  $n new TLS 1.3: $out"
  t0=$(cpu_ticks $pid)
  out=$(tlsload 127.0.0.1:$p -tls 1.2)
  t1=$(cpu_ticks $pid)
  R[$n,n12,rps,$r]=$(echo "$out" | awk '{print $1}')
  R[$n,n12,us,$r]=$(us_per_req $((t1 - t0)) "$(awk -v r="${R[$n,n12,rps,$r]}" -v d="$D" 'BEGIN { print r * d }')")
  echo "  $n new TLS 1.2: $out"
  if [ "$n" = edgeshim ]; then
    t0=$(cpu_ticks $pid)
    out=$(tlsload 127.0.0.1:$p -pq)
    t1=$(cpu_ticks $pid)
    R[$n,pq,rps,$r]=$(echo "$out" | awk '{print $1}')
    R[$n,pq,us,$r]=$(us_per_req $((t1 - t0)) "$(awk -v r="${R[$n,pq,rps,$r]}" -v d="$D" 'BEGIN { print r * d }')")
  fi
  echo "  $n round $r: h1 ${R[$n,ka,rps,$r]} r/s ${R[$n,ka,us,$r]} us; h2 ${R[$n,h2,rps,$r]} r/s ${R[$n,h2,us,$r]} us; new1.3 ${R[$n,n13,us,$r]} us; new1.2 ${R[$n,n12,us,$r]} us"
}
median() { printf '%s\n' "$@" | grep -v '^n/a$' | sort -g | awk '{a[NR]=$1} END { if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR+1)/2]; else printf "%.0f", (a[NR/2]+a[NR/2+1])/2 }'; }
med() { local v=() r; for r in $(seq $ROUNDS); do v+=("${R[$1,$2,$3,$r]:-n/a}"); done; median "${v[@]}"; }
for r in $(seq $ROUNDS); do
  echo "round $r"
  for name in edgeshim:18443 nginx:18444 haproxy:18445; do
    n=${name%%:*}; p=${name##*:}; pid_var=PID_$n
    measure $n $p ${!pid_var} $r
  done
done
echo
echo "medians of $ROUNDS rounds, ${D}s each (req/s, CPU us/request):"
printf "%-10s %10s %7s %10s %7s %12s %7s %12s %7s\n" proxy "h1.1 r/s" us/req "h2 r/s" us/req "new1.3 r/s" us/req "new1.2 r/s" us/req
for n in edgeshim nginx haproxy; do
  printf "%-10s %10s %7s %10s %7s %12s %7s %12s %7s\n" $n "$(med $n ka rps)" "$(med $n ka us)" "$(med $n h2 rps)" "$(med $n h2 us)" \
    "$(med $n n13 rps)" "$(med $n n13 us)" "$(med $n n12 rps)" "$(med $n n12 us)"
done
echo "edgeshim new TLS 1.3 with X25519MLKEM768 (PQ hybrid, edgeshim only): $(med edgeshim pq rps) r/s, $(med edgeshim pq us) us/req"
# HTTP/3 (no anchor in Debian: edgeshim only, quic-go client) beside
# HTTP/2 on the same HTTP/3-enabled instance.
for r in $(seq $ROUNDS); do
  t0=$(cpu_ticks $PID_edgeshim3)
  out=$(h2load -c 64 -m 10 -t 2 -D ${D} "https://127.0.0.1:18446/" 2>&1)
  t1=$(cpu_ticks $PID_edgeshim3)
  R[e3,h2,us,$r]=$(us_per_req $((t1 - t0)) "$(echo "$out" | awk '/^requests:/ {print $8}')")
  out=$("$W/h3load" -addr 127.0.0.1:18446 -c 64 -m 10 -d ${D}s)
  t2=$(cpu_ticks $PID_edgeshim3)
  R[e3,h3,rps,$r]=$(echo "$out" | awk '{print $1}')
  R[e3,h3,us,$r]=$(us_per_req $((t2 - t1)) "$(echo "$out" | awk '{print $4}')")
done
echo "edgeshim with http3 on: HTTP/3 (64 conns x 10 streams) $(med e3 h3 rps) r/s, $(med e3 h3 us) us/req; HTTP/2 on the same instance $(med e3 h2 us) us/req"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "n/a") printf "%.2f", a / b; else print "n/a" }'; }
echo
for o in nginx haproxy; do
  echo "CPU per request, edgeshim / $o: h1.1 keep-alive $(ratio "$(med edgeshim ka us)" "$(med $o ka us)"), h2 $(ratio "$(med edgeshim h2 us)" "$(med $o h2 us)"), new TLS 1.3 $(ratio "$(med edgeshim n13 us)" "$(med $o n13 us)"), new TLS 1.2 $(ratio "$(med edgeshim n12 us)" "$(med $o n12 us)")"
done
