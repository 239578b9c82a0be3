#!/usr/bin/env bash
# Scrape time and RSS after 10 and after 200 upgrades of an idle baton with
# 2,000 backends: the counter history must not make later scrapes slower.
# Usage: bench/history_scrape.sh [upgrades]
source "$(dirname "$0")/lib.sh"
n=${1:-200}
python3 - "$WORK/config.yaml" "$WORK" <<'PY'
import sys
backends = "".join(f"      - {{ address: \"127.0.0.1:{20000 + i}\" }}\n" for i in range(2000))
open(sys.argv[1], "w").write(f"""admin: {{ listen: 127.0.0.1:19991 }}
control: {{ socket: {sys.argv[2]}/baton.sock }}
pid_file: {sys.argv[2]}/baton.pid
upgrade: {{ max_draining: 8 }}
drain: {{ timeout: 5s }}
listeners:
  - {{ name: web, listen: 127.0.0.1:19990, cluster: app }}
clusters:
  - name: app
    backends:
{backends}""")
PY
start_baton "$WORK/config.yaml" 127.0.0.1:19991
scrape() {
  python3 - <<'PY'
import time, urllib.request
times = []
for _ in range(25):
    t = time.perf_counter()
    body = urllib.request.urlopen("http://127.0.0.1:19991/metrics").read()
    times.append(time.perf_counter() - t)
times.sort()
print(f"scrape min {times[0]*1000:.2f} ms, median {times[12]*1000:.2f} ms, {len(body)} bytes")
PY
}
for i in $(seq 1 "$n"); do
  "$BATON" upgrade -c "$WORK/config.yaml" > /dev/null
  # Wait for the predecessor to be gone, as a steady state.
  for _ in $(seq 100); do
    curl -s 127.0.0.1:19991/metrics | grep -q '^baton_draining_processes 0' && break
    sleep 0.05
  done
  if [ "$i" = 10 ] || [ "$i" = "$n" ]; then
    pid=$(cat "$WORK/baton.pid")
    c0=$(awk '{print $14 + $15}' /proc/$pid/stat); sleep 3; c1=$(awk '{print $14 + $15}' /proc/$pid/stat)
    echo "after upgrade $i: $(scrape); RSS $(awk '/VmRSS/ {print $2}' /proc/$pid/status) KiB; idle CPU $(( (c1 - c0) * 10 )) ms over 3 s"
  fi
done
# The same config in a fresh process at once: the machine's speed drifts,
# so the last figure needs a reference measured now.
last=$(cat "$WORK/baton.pid")
kill "$last" 2>/dev/null || true
for _ in $(seq 100); do kill -0 "$last" 2>/dev/null || break; sleep 0.05; done
start_baton "$WORK/config.yaml" 127.0.0.1:19991
echo "a fresh process, same config: $(scrape)"
kill "$(cat "$WORK/baton.pid")" 2>/dev/null || true
