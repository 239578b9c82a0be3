#!/usr/bin/env bash
# New-connection throughput (wrk -t2 -c50, Connection: close, 100-byte
# responses from nginx) through baton variants in one run: each balancer over
# four backends; PROXY v2 sent against plain forwarding; SNI routing of TLS
# against plain TLS pass-through. Usage: bench/variants.sh [seconds] [rounds]
source "$(dirname "$0")/lib.sh"
secs=${1:-10}
rounds=${2:-3}
start_nginx 18580 18590 18591
# Three more plain ports for the balancers.
sed -i "s|  server { listen 127.0.0.1:18580;|  server { listen 127.0.0.1:18580; listen 127.0.0.1:18581; listen 127.0.0.1:18582; listen 127.0.0.1:18583;|" "$WORK/nginx/nginx.conf"
kill -HUP "$(cat "$WORK/nginx/nginx.pid")"; sleep 0.5
four='[ { address: "127.0.0.1:18580" }, { address: "127.0.0.1:18581" }, { address: "127.0.0.1:18582" }, { address: "127.0.0.1:18583" } ]'
{
  echo "admin: { listen: 127.0.0.1:19989 }"
  echo "control: { socket: $WORK/baton.sock }"
  echo "listeners:"
  i=0
  for b in round_robin least_conn random p2c hash_source_ip; do
    echo "  - { name: $b, listen: 127.0.0.1:$((19990 + i)), cluster: $b, max_connections: 9000 }"; i=$((i + 1))
  done
  echo "  - { name: plain, listen: 127.0.0.1:19980, cluster: one, max_connections: 9000 }"
  echo "  - { name: send_v2, listen: 127.0.0.1:19981, cluster: pp, max_connections: 9000, proxy_protocol: { send: v2 } }"
  echo "  - { name: tls_pass, listen: 127.0.0.1:19982, cluster: tls, max_connections: 9000 }"
  echo "  - { name: sni, listen: 127.0.0.1:19983, max_connections: 9000, sni_routes: { localhost: tls } }"
  echo "clusters:"
  for b in round_robin least_conn random p2c hash_source_ip; do
    echo "  - { name: $b, balance: $b, retries: 0, backends: $four }"
  done
  echo "  - { name: one, retries: 0, backends: [ { address: \"127.0.0.1:18580\" } ] }"
  echo "  - { name: pp, retries: 0, backends: [ { address: \"127.0.0.1:18590\" } ] }"
  echo "  - { name: tls, retries: 0, backends: [ { address: \"127.0.0.1:18591\" } ] }"
} > "$WORK/config.yaml"
start_baton "$WORK/config.yaml" 127.0.0.1:19989
for round in $(seq "$rounds"); do
  echo "round $round"
  i=0
  for b in round_robin least_conn random p2c hash_source_ip; do
    printf '  %-16s %s\n' "$b" "$(wrk_close "http://127.0.0.1:$((19990 + i))/" "${secs}s")"; i=$((i + 1))
  done
  printf '  %-16s %s\n' plain "$(wrk_close http://127.0.0.1:19980/ "${secs}s")"
  printf '  %-16s %s\n' "send v2" "$(wrk_close http://127.0.0.1:19981/ "${secs}s")"
  printf '  %-16s %s\n' "TLS pass-through" "$(wrk_close https://localhost:19982/ "${secs}s")"
  printf '  %-16s %s\n' "SNI routing" "$(wrk_close https://localhost:19983/ "${secs}s")"
done
