# syntax=docker/dockerfile:1
#
# mailconnect container image. From the repository root:
#
#   docker build -t mailconnect:0.1.0 .
#   docker run --rm -p 8080:8080 --env-file mailconnect.env mailconnect:0.1.0
#
# Final stage: gcr.io/distroless/cc-debian12:nonroot. It has glibc and
# libgcc (the binary is built on the same Debian 12 in rust:1-bookworm), the
# Debian CA bundle in /etc/ssl/certs (reqwest uses rustls with the system
# roots, so provider calls need it) and tzdata; no shell, no package manager,
# user nonroot (65532). About 25 MB plus the ~12 MB binary.
#
# Health check: distroless has no curl or wget, and installing one would mean
# a shell-capable base. Instead the builder compiles deploy/healthcheck.rs (a
# std-only HTTP/1.1 client, a few hundred KB) with plain rustc and the image
# runs it as its HEALTHCHECK. Kubernetes ignores HEALTHCHECK: there the probes
# in deploy/deployment.yaml (/healthz, /readyz) are the health check.
#
# What the builder copies is listed twice: here and as the allow-list in
# .dockerignore; scripts/check-deploy.sh checks they agree with the crate.

FROM rust:1-bookworm AS builder
WORKDIR /src

# 1. Dependencies only. This layer is rebuilt only when a manifest or the
#    lock file changes: the workspace manifests with stub targets, so cargo
#    compiles every dependency (the root crate may depend on the workspace
#    member mailconnect-sandbox at sandbox/).
COPY Cargo.toml Cargo.lock ./
COPY sandbox/Cargo.toml sandbox/Cargo.toml
RUN mkdir -p src sandbox/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs sandbox/src/lib.rs \
 && cargo build --release --locked --no-default-features --bin mailconnect \
 && rm -rf src sandbox/src

# 2. The real sources: the code, the migrations and the admin page that
#    sqlx::migrate! and include_str! embed at compile time. COPY keeps the
#    files' own modification times, which can be older than the stubs' build,
#    so touch them to make cargo rebuild the workspace crates. The binary is
#    built without the default `demo` feature: the sandbox (a workspace
#    member, so its sources must be present) is not compiled into it, and
#    neither is its checked-in signing key.
COPY src src
COPY sandbox/src sandbox/src
COPY migrations migrations
COPY assets assets
RUN find src sandbox/src -type f -exec touch {} + \
 && cargo build --release --locked --no-default-features --bin mailconnect \
 && install -D -m 0755 target/release/mailconnect /out/mailconnect \
 && mkdir -p /out/data

# 3. The HEALTHCHECK client (not part of the Cargo workspace).
COPY deploy/healthcheck.rs /tmp/healthcheck.rs
RUN rustc --edition 2021 -C opt-level=s -C strip=symbols \
      -o /out/healthcheck /tmp/healthcheck.rs


FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="mailconnect" \
      org.opencontainers.image.description="OAuth 2.0 for IMAP/SMTP mailboxes (Microsoft 365, Google): connect, keep fresh, hand out XOAUTH2" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/mailconnect /usr/local/bin/mailconnect
COPY --from=builder /out/healthcheck /usr/local/bin/healthcheck
# A writable working directory for the single-container case: the default
# DATABASE_URL (sqlite://mailconnect.db) lands in /data; mount a volume there
# to keep it. With PostgreSQL (Kubernetes) nothing is written to disk.
COPY --from=builder --chown=65532:65532 /out/data /data
WORKDIR /data

USER 65532:65532
ENV MAILCONNECT_BIND=0.0.0.0:8080
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/healthcheck", "/healthz"]

ENTRYPOINT ["/usr/local/bin/mailconnect"]
CMD ["serve"]
