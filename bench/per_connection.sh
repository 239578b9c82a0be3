#!/usr/bin/env bash
# New connection per request (wrk -t2 -c50, Connection: close, 100-byte
# answers from nginx) through baton and HAProxy (mode tcp, one thread), each
# started afresh for every run and in this session, as the rig starts them.
# Per run: proxy CPU per request, loopback segments per request (nstat,
# the whole machine), context switches of the proxy per request, and wrk's
# latency percentiles (ms). Usage: bench/per_connection.sh [seconds] [rounds]
source "$(dirname "$0")/lib.sh"
secs=${1:-6}
rounds=${2:-3}
start_nginx 18680
cat > "$WORK/config.yaml" <<CONF
admin: { listen: 127.0.0.1:19689 }
control: { socket: $WORK/baton.sock }
listeners:
  - { name: bench, listen: 127.0.0.1:19680, cluster: one, max_connections: 9000 }
clusters:
  - { name: one, retries: 0, idle_timeout: 1h, backends: [ { address: "127.0.0.1:18680" } ] }
CONF
cat > "$WORK/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:19681
    default_backend be
backend be
    server s1 127.0.0.1:18680
CONF
cat > "$WORK/pct.lua" <<'LUA'
done = function(summary, latency, requests)
  local out = ""
  for _, p in ipairs({50, 90, 95, 98, 99, 99.5, 99.9}) do
    out = out .. string.format(" p%s %.2f", p, latency:percentile(p) / 1000)
  end
  io.write("pct" .. out .. string.format(" max %.2f\n", latency.max / 1000))
end
LUA
hz=$(getconf CLK_TCK)

# One run against the proxy $2 (pid) on port $3, printed under the name $1.
measure() {
  local name=$1 pid=$2 port=$3
  local cpu0 cs0 out cpu1 cs1 req segs
  cpu0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  cs0=$(awk '/^nonvoluntary/ {print $2}' "/proc/$pid/status")
  nstat -n >/dev/null
  out=$(wrk -t2 -c50 -d"${secs}s" -s "$WORK/pct.lua" -H 'Connection: close' "http://127.0.0.1:$port/")
  segs=$(nstat 2>/dev/null | awk '$1 == "TcpOutSegs" {print $2}')
  cpu1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  cs1=$(awk '/^nonvoluntary/ {print $2}' "/proc/$pid/status")
  req=$(echo "$out" | awk '/requests in/ {print $1}')
  awk -v n="$name" -v r="$req" -v s="$secs" -v c=$((cpu1 - cpu0)) -v hz="$hz" -v g="$segs" -v x=$((cs1 - cs0)) \
    'BEGIN {printf "  %-8s %6d req/s  %5.1f us/req  %5.2f segments/req  %4.2f preempted/req ", n, r / s, c / hz / r * 1e6, g / r, x / r}'
  echo "$out" | awk '/^pct/ {$1 = ""; print}'
}

stop() { kill "$1"; while kill -0 "$1" 2>/dev/null; do sleep 0.05; done; }

for round in $(seq "$rounds"); do
  echo "round $round"
  TOKIO_WORKER_THREADS=1 RUST_LOG=warn "$BATON" run -c "$WORK/config.yaml" > "$WORK/baton.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fsS http://127.0.0.1:19689/readyz >/dev/null 2>&1 && break; sleep 0.1; done
  measure baton "$pid" 19680
  stop "$pid"
  haproxy -db -f "$WORK/haproxy.cfg" >/dev/null 2>&1 &
  pid=$!
  sleep 0.5
  measure haproxy "$pid" 19681
  stop "$pid"
done
