#!/usr/bin/env bash
# What the access log costs scenario c (wrk -t2 -c50, a new connection per
# request, one access line each), with the log going to a file and to a
# slow pipe (a reader that takes ~400 KB/s, far less than c writes).
# Usage: bench/log_cost.sh OLD_BATON NEW_BATON [seconds] [rounds]
source "$(dirname "$0")/lib.sh"
old=$1 new=$2 secs=${3:-10} rounds=${4:-3}
start_nginx 18580
cat > "$WORK/config.yaml" <<YAML
admin: { listen: 127.0.0.1:19989 }
control: { socket: $WORK/baton.sock }
listeners:
  - { name: web, listen: 127.0.0.1:19990, cluster: one, max_connections: 9000 }
clusters:
  - { name: one, retries: 0, backends: [ { address: "127.0.0.1:18580" } ] }
YAML
# Reads 4 KiB every 10 ms and throws it away.
cat > "$WORK/slow_reader.py" <<'PY'
import os, sys, time
while os.read(0, 4096):
    time.sleep(0.01)
PY
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run_one() {  # binary sink
  local bin=$1 sink=$2 pid
  if [ "$sink" = file ]; then
    RUST_LOG=info "$bin" run -c "$WORK/config.yaml" > "$WORK/access.log" 2>&1 &
    pid=$!
  else
    RUST_LOG=info "$bin" run -c "$WORK/config.yaml" 2>&1 > /dev/null | python3 "$WORK/slow_reader.py" &
    sleep 0.2
    pid=$(pgrep -n -f "$bin run -c $WORK/config.yaml")
  fi
  for _ in $(seq 100); do curl -fsS http://127.0.0.1:19989/readyz >/dev/null 2>&1 && break; sleep 0.1; done
  local t0 out t1 rps
  t0=$(cpu_ticks "$pid")
  out=$(wrk_close http://127.0.0.1:19990/ "${secs}s")
  t1=$(cpu_ticks "$pid")
  rps=${out%% *}
  local dropped
  dropped=$(curl -fsS http://127.0.0.1:19989/metrics | awk '/^baton_log_lines_dropped_total/ {print $2}')
  awk -v rps="$rps" -v t="$((t1 - t0))" -v s="$secs" -v d="${dropped:-n/a}" -v rest="${out#* }" \
    'BEGIN { printf "%9.0f req/s  %5.2f CPU-s/100k  dropped %s  %s\n", rps, (t / 100) / (rps * s / 100000), d, rest }'
  kill "$pid"; wait "$pid" 2>/dev/null || true
  for _ in $(seq 50); do curl -fsS http://127.0.0.1:19989/healthz >/dev/null 2>&1 || break; sleep 0.1; done
}
for round in $(seq "$rounds"); do
  echo "round $round"
  for sink in file pipe; do
    printf '  old %-5s ' "$sink"; run_one "$old" "$sink"
    printf '  new %-5s ' "$sink"; run_one "$new" "$sink"
  done
done
