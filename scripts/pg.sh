#!/usr/bin/env bash
# A throw-away PostgreSQL server on a loopback port, for the tests.
#   scripts/pg.sh start   → prints the URL to use as MAILCONNECT_TEST_POSTGRES
#   scripts/pg.sh stop
#   scripts/pg.sh running → exit status 0 when a server is up
# Runs as the `postgres` user when started as root (initdb refuses root).
set -euo pipefail
PORT=${MAILCONNECT_PG_PORT:-55432}
DIR=${MAILCONNECT_PG_DIR:-/tmp/mailconnect-pg}

bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$d" ]; then
        echo "installing PostgreSQL from Debian's packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql >&2
        d=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    echo "$d"
}

as_pg() {
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/bash -c "$*"
    else
        bash -c "$*"
    fi
}

case "${1:-}" in
running)
    BIN=$(bindir)
    [ -f "$DIR/postmaster.pid" ] && as_pg "$BIN/pg_ctl -D $DIR status" >/dev/null 2>&1
    ;;
start)
    BIN=$(bindir)
    if [ -f "$DIR/postmaster.pid" ] && as_pg "$BIN/pg_ctl -D $DIR status" >/dev/null 2>&1; then
        echo "postgres://postgres@127.0.0.1:$PORT/postgres"
        exit 0
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$DIR"
    as_pg "$BIN/initdb -D $DIR -U postgres --auth=trust -E UTF8 >/dev/null"
    as_pg "$BIN/pg_ctl -D $DIR -l $DIR/server.log -w -t 60 \
        -o '-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400' start >/dev/null"
    echo "postgres://postgres@127.0.0.1:$PORT/postgres"
    ;;
stop)
    BIN=$(bindir)
    if [ -d "$DIR" ]; then
        as_pg "$BIN/pg_ctl -D $DIR -m fast -w stop >/dev/null 2>&1" || true
        rm -rf "$DIR"
    fi
    ;;
*)
    echo "usage: $0 start|stop|running" >&2
    exit 2
    ;;
esac
