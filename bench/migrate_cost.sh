#!/usr/bin/env bash
# Live migration: N idle streams moved by one upgrade (release → last
# acknowledged batch, upgrade → old process gone, RSS per stream in the old
# process as accepted and in the new one as migrated), then the longest
# pause a bulk stream sees across an upgrade.
# Usage: bench/migrate_cost.sh [streams]
source "$(dirname "$0")/lib.sh"
n=${1:-10000}
# Two descriptors per stream in baton (each process, during the move), one
# in each helper: the hard RLIMIT_NOFILE bounds n.
hard=$(ulimit -Hn)
ulimit -n "$hard"
if [ "$hard" != unlimited ] && [ $((n * 2 + 100)) -gt "$hard" ]; then
  echo "RLIMIT_NOFILE hard limit $hard allows at most $(( (hard - 100) / 2 )) streams" >&2; exit 1
fi
start_echo
cat > "$WORK/config.yaml" <<CONF
admin: { listen: 127.0.0.1:19981 }
control: { socket: $WORK/baton.sock }
pid_file: $WORK/baton.pid
drain: { timeout: 5m }
listeners:
  - { name: web, listen: 127.0.0.1:19980, cluster: app, max_connections: $((n + 100)) }
clusters:
  - { name: app, backends: [ { address: "127.0.0.1:$(echo_port)" } ] }
CONF
start_baton "$WORK/config.yaml" 127.0.0.1:19981
old=$(cat "$WORK/baton.pid")
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
now_ms() { date +%s%3N; }
idle=$(rss "$old")
python3 - "$n" "$WORK/hold" <<'PY' &
import socket, sys, os, time
conns = []
for _ in range(int(sys.argv[1])):
    s = socket.create_connection(("127.0.0.1", 19980))
    s.sendall(b"x" * 64); s.recv(64); conns.append(s)
open(sys.argv[2], "w").write("ready")
while os.path.exists(sys.argv[2]):
    time.sleep(0.2)
# Every stream still echoes, through whichever process holds it now.
bad = 0
for s in conns:
    s.settimeout(10)
    s.sendall(b"y" * 64)
    got = b""
    while len(got) < 64:
        chunk = s.recv(64 - len(got))
        if not chunk:
            break
        got += chunk
    bad += got != b"y" * 64
open(sys.argv[2] + ".result", "w").write(str(bad))
PY
client=$!
for _ in $(seq 600); do [ -s "$WORK/hold" ] && break; sleep 0.1; done
held=$(rss "$old")
t0=$(now_ms)
"$BATON" upgrade -c "$WORK/config.yaml"
t1=$(now_ms)
while kill -0 "$old" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$old/stat" 2>/dev/null)" != Z ]; do sleep 0.01; done
t2=$(now_ms)
new=$(cat "$WORK/baton.pid")
sleep 1
moved_rss=$(rss "$new")
metrics=$(curl -s 127.0.0.1:19981/metrics)
rm -f "$WORK/hold"; wait "$client" || true
echo "streams: $n"
echo "baton upgrade took $((t1 - t0)) ms; old process gone $((t2 - t0)) ms after the upgrade began"
echo "$metrics" | grep -E '^baton_migration_duration_seconds_(sum|count)|^baton_connections_migrated_total|^baton_connections_active'
echo "old process: RSS idle ${idle} KiB, with $n accepted streams ${held} KiB: $(( (held - idle) * 1024 / n )) bytes per accepted stream"
echo "new process: RSS with $n migrated streams ${moved_rss} KiB: $(( (moved_rss - idle) * 1024 / n )) bytes per migrated stream (same idle baseline)"
echo "streams that failed their echo after the move: $(cat "$WORK/hold.result")"

# A bulk stream both ways across an upgrade: the longest gap between two
# reads on the client, in the second around the upgrade.
python3 - "$WORK/gap" <<'PY' &
import socket, sys, threading, time
s = socket.create_connection(("127.0.0.1", 19980))
stop = time.time() + 6
def push():
    chunk = b"z" * 65536
    while time.time() < stop:
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=push, daemon=True).start()
gaps, last, total = [], time.time(), 0
while True:
    data = s.recv(262144)
    if not data:
        break
    now = time.time()
    gaps.append((now, now - last)); last = now; total += len(data)
open(sys.argv[1], "w").write(repr((gaps, total)))
PY
bulk=$!
sleep 2
u0=$(date +%s.%N)
"$BATON" upgrade -c "$WORK/config.yaml"
wait "$bulk" || true
python3 - "$WORK/gap" "$u0" <<'PY'
import sys
gaps, total = eval(open(sys.argv[1]).read())
u0 = float(sys.argv[2])
around = [g for t, g in gaps if u0 - 0.5 <= t <= u0 + 1.5]
steady = sorted(g for t, g in gaps if t < u0 - 0.5)
print(f"bulk stream: {total / 2**20:.0f} MiB echoed in 6 s; longest gap between reads around the upgrade "
      f"{max(around) * 1000:.1f} ms (steady-state p99 {steady[int(len(steady) * 0.99)] * 1000:.2f} ms, max {steady[-1] * 1000:.1f} ms)")
PY
kill "$(cat "$WORK/baton.pid")" 2>/dev/null || true
