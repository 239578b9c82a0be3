# Shared helpers for baton's own measurements (beside ../shared/bench/):
# a small nginx backend and a baton, both on 127.0.0.1, stopped by pid.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BATON=${BATON_BIN:-$ROOT/target/release/baton}
WORK=$(mktemp -d /tmp/baton-bench.XXXXXX)
chmod 755 "$WORK"  # nginx workers read the docroot
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# nginx answering 100 bytes on 127.0.0.1:$1 (plus, with $2, a PROXY-protocol
# listener on that port and an HTTPS one on $3).
start_nginx() {
  local port=$1 pp_port=${2:-} tls_port=${3:-}
  mkdir -p "$WORK/nginx"
  head -c 100 /dev/zero | tr '\0' x > "$WORK/nginx/index.html"
  local extra=""
  [ -n "$pp_port" ] && extra+="  server { listen 127.0.0.1:$pp_port proxy_protocol; location / { root $WORK/nginx; } }"$'\n'
  if [ -n "$tls_port" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
      -keyout "$WORK/nginx/key.pem" -out "$WORK/nginx/cert.pem" 2>/dev/null
    extra+="  server { listen 127.0.0.1:$tls_port ssl; ssl_certificate $WORK/nginx/cert.pem; ssl_certificate_key $WORK/nginx/key.pem; ssl_session_tickets off; ssl_session_cache off; location / { root $WORK/nginx; } }"$'\n'
  fi
  cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$port; location / { root $WORK/nginx; } }
$extra}
CONF
  nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
  PIDS+=($!)
  sleep 0.5
}

# baton with the config in $1 (a file); waits for /readyz on $2.
start_baton() {
  "$BATON" run -c "$1" > "$WORK/baton.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -fsS "http://$2/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "baton did not get ready" >&2; cat "$WORK/baton.log" >&2; exit 1
}

# wrk, new connection per request: prints "req/s errors".
wrk_close() {
  wrk -t2 -c50 -d"$2" -H 'Connection: close' "$1" 2>&1 | awk '
    /Requests\/sec/ {rps=$2}
    /Socket errors/ {err=$0}
    /Non-2xx/ {non2xx=$0}
    END {print rps, (err==""?"no socket errors":err), (non2xx==""?"":non2xx)}'
}

# An echo server (python asyncio) on 127.0.0.1, any port: echo_port prints it.
start_echo() {
  python3 - "$WORK/echo.port" <<'PY' &
import asyncio, sys
async def echo(r, w):
    try:
        while data := await r.read(65536):
            w.write(data); await w.drain()
    except Exception:
        pass
    w.close()
async def main():
    srv = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=8192)
    open(sys.argv[1], "w").write(str(srv.sockets[0].getsockname()[1]))
    await srv.serve_forever()
asyncio.run(main())
PY
  PIDS+=($!)
  for _ in $(seq 50); do [ -s "$WORK/echo.port" ] && break; sleep 0.1; done
}
echo_port() { cat "$WORK/echo.port"; }

