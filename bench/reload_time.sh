#!/usr/bin/env bash
# Reload time for 1,000 clusters x 10 backends: `baton reload` reports the
# time from request to new config live. Usage: bench/reload_time.sh
source "$(dirname "$0")/lib.sh"
cfg=$WORK/config.yaml
{
  echo "admin: { listen: 127.0.0.1:19951 }"
  echo "control: { socket: $WORK/baton.sock }"
  echo "listeners:"
  echo "  - { name: web, listen: 127.0.0.1:19950, cluster: c0 }"
  echo "clusters:"
  for c in $(seq 0 999); do
    printf '  - name: c%d\n    backends:\n' "$c"
    for b in $(seq 1 10); do printf '      - { address: "127.%d.%d.%d:80" }\n' $((c / 250 + 1)) $((c % 250)) "$b"; done
  done
} > "$cfg"
start_baton "$cfg" 127.0.0.1:19951
for i in $(seq 10); do
  # Alternate a weight so every reload changes something.
  sed -i "s/127.1.0.1:80\" }/127.1.0.1:80\", weight: $((i % 2 + 1)) }/; s/weight: [12] }/weight: $((i % 2 + 1)) }/" "$cfg"
  "$BATON" reload -c "$cfg" | head -1
done
