# Multi-stage build: compile with the Rust image, run on slim Debian as a
# non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
RUN cargo build --release --locked --bin baton

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 baton \
 && useradd --system --uid 10001 --gid 10001 --home /var/lib/baton --shell /usr/sbin/nologin baton \
 && mkdir -p /etc/baton /run/baton \
 && chown baton:baton /run/baton
COPY --from=build /src/target/release/baton /usr/local/bin/baton
# The shipped config, its proxy listeners made to listen on every interface of
# the container, its socket and pid file in /run/baton. Admin (/metrics,
# /status) stays on the container's loopback unless you opt in:
# --build-arg ADMIN_LISTEN=0.0.0.0:9901 (then publish 9901 yourself, and keep
# it off the internet). Mount your own config over it.
ARG ADMIN_LISTEN=127.0.0.1:9901
COPY config.yaml /etc/baton/config.yaml
RUN sed -i -e '/^listeners:/,$ s|listen: 127.0.0.1:|listen: 0.0.0.0:|' \
           -e "/^admin:/,/^[a-z]/ s|listen: 127.0.0.1:9901|listen: ${ADMIN_LISTEN}|" \
           -e 's|socket: baton.sock|socket: /run/baton/control.sock|' \
           -e 's|pid_file: baton.pid|pid_file: /run/baton/baton.pid|' /etc/baton/config.yaml
USER baton
WORKDIR /run/baton
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9901/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/baton"]
CMD ["run", "-c", "/etc/baton/config.yaml"]
