#!/usr/bin/env bash
# Issue 16's costs, release build:
# 1. a reload driven by reload.watch against one driven by SIGHUP: reload
#    duration (baton_config_reload_duration_seconds) and baton's CPU per
#    reload, N of each, alternating;
# 2. 100 SRV targets (dnsmasq on loopback) re-resolved every second: baton's
#    CPU over S seconds, as a share of one core.
# Usage: bench/discovery_cost.sh [reloads] [seconds]
source "$(dirname "$0")/lib.sh"
n=${1:-50} secs=${2:-30}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { curl -fsS "http://$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
start_echo
port=$(echo_port)
cat > "$WORK/config.yaml" <<YAML
admin: { listen: 127.0.0.1:19989 }
control: { socket: $WORK/baton.sock }
reload: { watch: true, debounce: 50ms }
listeners:
  - { name: web, listen: 127.0.0.1:19990, cluster: one }
clusters:
  - { name: one, connect_timeout: 2s, backends: [ { address: "127.0.0.1:$port" } ] }
YAML
start_baton "$WORK/config.yaml" 127.0.0.1:19989
pid=${PIDS[-1]}
# Reloads done, read from the log (polling /metrics would add scrapes, and
# more of them to the slower-to-start watched reloads).
gen() { grep -c "config reloaded" "$WORK/baton.log" || true; }
wait_gen() { for _ in $(seq 500); do [ "$(gen)" -ge "$1" ] && return; sleep 0.01; done; echo "reload $1 not seen" >&2; exit 1; }
declare -A dur cpu
for kind in sighup watch; do dur[$kind]=0; cpu[$kind]=0; done
for i in $(seq "$n"); do
  for kind in sighup watch; do
    g=$(gen)
    s0=$(metric 127.0.0.1:19989 baton_config_reload_duration_seconds_sum)
    t0=$(cpu_ticks "$pid")
    if [ "$kind" = sighup ]; then
      kill -HUP "$pid"
    else
      # A different timeout each time: the bytes change.
      sed -i "s/connect_timeout: [0-9]*s/connect_timeout: $((i % 7 + 2))s/" "$WORK/config.yaml"
    fi
    wait_gen $((g + 1))
    t1=$(cpu_ticks "$pid")
    s1=$(metric 127.0.0.1:19989 baton_config_reload_duration_seconds_sum)
    dur[$kind]=$(awk -v a="${dur[$kind]}" -v x="$s0" -v y="$s1" 'BEGIN {print a + y - x}')
    cpu[$kind]=$((cpu[$kind] + t1 - t0))
  done
done
for kind in sighup watch; do
  awk -v k="$kind" -v d="${dur[$kind]}" -v c="${cpu[$kind]}" -v n="$n" \
    'BEGIN { printf "%-7s %d reloads: %.2f ms each (reload duration), %.1f ms CPU each (whole process, two scrapes included)\n", k, n, d / n * 1000, c * 10 / n }'
done
kill "$pid"; wait "$pid" 2>/dev/null || true

# 2. 100 SRV targets every second.
dport=18653
args=()
for i in $(seq 100); do
  args+=("--srv-host=_app._tcp.app.internal,t$i.app.internal,$port,10,1" "--host-record=t$i.app.internal,127.0.0.1")
done
dnsmasq --keep-in-foreground --port=$dport --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
  --conf-file=/dev/null --pid-file= --user=root --local-ttl=0 "${args[@]}" &
PIDS+=($!)
sleep 0.5
cat > "$WORK/srv.yaml" <<YAML
admin: { listen: 127.0.0.1:19989 }
control: { socket: $WORK/baton.sock }
dns: { servers: ["127.0.0.1:$dport"] }
listeners:
  - { name: web, listen: 127.0.0.1:19990, cluster: srv }
clusters:
  - name: srv
    resolve_interval: 1s
    backends: [ { srv: _app._tcp.app.internal } ]
YAML
start_baton "$WORK/srv.yaml" 127.0.0.1:19989
pid=${PIDS[-1]}
targets=$(curl -fsS http://127.0.0.1:19989/status | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["clusters"][0]["backends"]))')
sleep 2
t0=$(cpu_ticks "$pid"); sleep "$secs"; t1=$(cpu_ticks "$pid")
awk -v t="$((t1 - t0))" -v s="$secs" -v n="$targets" \
  'BEGIN { printf "SRV: %d targets re-resolved every 1s: %.2f%% of one core over %ds\n", n, t / s, s }'
