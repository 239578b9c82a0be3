#!/usr/bin/env bash
# Builds baton, starts two demo HTTP backends (127.0.0.1:9001 and :9002) and
# runs baton in the foreground with ./config.yaml. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --bin baton --example demo_backend
pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
for i in 1 2; do
  target/release/examples/demo_backend "127.0.0.1:900$i" "app-$i" &
  pids+=($!)
done
target/release/baton run -c config.yaml || status=$?
# After a binary upgrade the process that accepts is a successor: keep the
# backends up while it runs (the pid file names it).
while [ -f baton.pid ] && kill -0 "$(cat baton.pid)" 2>/dev/null; do sleep 1; done
exit "${status:-0}"
