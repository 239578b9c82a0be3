#!/usr/bin/env bash
# New-connection throughput (as ../shared/bench scenario c: wrk -t2 -c50,
# Connection: close, 100-byte responses from nginx) through baton, alone and
# with a reload every 100 ms or an upgrade every second beside it.
# Usage: bench/under_churn.sh [seconds]
source "$(dirname "$0")/lib.sh"
secs=${1:-10}
start_nginx 18580
cat > "$WORK/config.yaml" <<CONF
admin: { listen: 127.0.0.1:19961 }
control: { socket: $WORK/baton.sock }
pid_file: $WORK/baton.pid
drain: { timeout: 30s }
upgrade: { max_draining: 20 }
listeners:
  - { name: web, listen: 127.0.0.1:19960, cluster: app, max_connections: 9000 }
clusters:
  - { name: app, retries: 0, backends: [ { address: "127.0.0.1:18580" } ] }
CONF
start_baton "$WORK/config.yaml" 127.0.0.1:19961
url=http://127.0.0.1:19960/
for round in 1 2 3; do
  echo "round $round"
  echo "  alone:              $(wrk_close $url ${secs}s)"
  ( end=$((SECONDS + secs)); while [ $SECONDS -lt $end ]; do "$BATON" reload -c "$WORK/config.yaml" >/dev/null; sleep 0.1; done ) &
  echo "  reload every 100ms: $(wrk_close $url ${secs}s)"
  wait $!
  ( end=$((SECONDS + secs)); while [ $SECONDS -lt $end ]; do "$BATON" upgrade -c "$WORK/config.yaml" >> "$WORK/upgrades.log"; sleep 1; done ) &
  echo "  upgrade every 1s:   $(wrk_close $url ${secs}s)"
  wait $!
done
echo "upgrades: $(grep -c upgraded "$WORK/upgrades.log") done, trigger-to-release ms (min/median/max):"
grep -o 'in [0-9]* ms' "$WORK/upgrades.log" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print "  " a[1], a[int((NR+1)/2)], a[NR]}'
kill "$(cat "$WORK/baton.pid")" 2>/dev/null || true
# From the log: trigger → successor accepting → predecessor stopped accepting.
awk '
  function t(ts,   p) { split(substr(ts, 12, 15), p, ":"); return p[1] * 3600 + p[2] * 60 + p[3] }
  /upgrade: successor started/ { t0 = t($1) }
  /accepting beside the predecessor/ && t0 { t1 = t($1) }
  /handed over; draining/ && t1 { n++; a += (t1 - t0) * 1000; b += (t($1) - t0) * 1000; t0 = 0; t1 = 0 }
  END { if (n) printf "hand-over, mean of %d: trigger to successor accepting %.1f ms, to predecessor stopped accepting %.1f ms\n", n, a / n, b / n }
' "$WORK/baton.log"
