#!/usr/bin/env bash
# A draining predecessor: memory per open stream, and the CPU its drain
# reports cost. Usage: bench/drain_cost.sh [streams]
source "$(dirname "$0")/lib.sh"
n=${1:-2000}
start_echo
cat > "$WORK/config.yaml" <<CONF
admin: { listen: 127.0.0.1:19971 }
control: { socket: $WORK/baton.sock }
pid_file: $WORK/baton.pid
drain: { timeout: 5m }
listeners:
  - { name: web, listen: 127.0.0.1:19970, cluster: app }
clusters:
  - { name: app, backends: [ { address: "127.0.0.1:$(echo_port)" } ] }
CONF
start_baton "$WORK/config.yaml" 127.0.0.1:19971
old=$(cat "$WORK/baton.pid")
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
idle=$(rss "$old")
python3 - "$n" "$WORK/hold" <<'PY' &
import socket, sys, os, time
conns = []
for _ in range(int(sys.argv[1])):
    s = socket.create_connection(("127.0.0.1", 19970))
    s.sendall(b"x" * 64); s.recv(64); conns.append(s)
open(sys.argv[2], "w").write("ready")
while os.path.exists(sys.argv[2]):
    time.sleep(0.2)
PY
client=$!
for _ in $(seq 300); do [ -s "$WORK/hold" ] && break; sleep 0.1; done
held=$(rss "$old")
"$BATON" upgrade -c "$WORK/config.yaml"
sleep 2
draining=$(rss "$old")
c0=$(cpu "$old"); sleep 20; c1=$(cpu "$old")
echo "streams: $n"
echo "predecessor RSS: idle ${idle} KiB, accepting with streams ${held} KiB, draining with streams ${draining} KiB"
echo "per open stream while draining: $(( (draining - idle) * 1024 / n )) bytes"
echo "drain reporting CPU: $(( (c1 - c0) * 10 )) ms over 20 s ($n streams held, one report per second)"
curl -s 127.0.0.1:19971/metrics | grep -E '^baton_drain_connections_active'
rm -f "$WORK/hold"; wait "$client" || true
kill "$(cat "$WORK/baton.pid")" 2>/dev/null || true
