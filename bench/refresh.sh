#!/usr/bin/env bash
# Background-refresh benchmark (issue 4, "Speed and size"): how fast one
# `mailconnect serve` refreshes N due accounts against a provider stub that
# answers at once, and how much memory it holds with N accounts stored, idle
# and during the sweep. Results in docs/benchmarks.md, "Background refresh".
#
#   bench/refresh.sh                     # the default matrix (below)
#   bench/refresh.sh one sqlite 100000 64   # one run: backend, accounts, concurrency
#
# Knobs (environment):
#   BENCH_RUNS        runs as "backend:count:concurrency ...", default
#                     "sqlite:10000:64 sqlite:100000:64 sqlite:1000000:64 postgres:10000:64 postgres:100000:64"
#   BENCH_IDLE_SECS   how long the idle replica runs before its RSS is read (default 8)
#   BENCH_SWEEP_LIMIT the longest a sweep may take, seconds (default 600)
#   BENCH_POLL_SECS   MAILCONNECT_REFRESH_POLL_SECS (default 1)
#   BENCH_PG          PostgreSQL server URL (default: `scripts/pg.sh start`, left running)
#   BENCH_EXTRA_ENV   extra VAR=value words for `serve` (e.g. "MAILCONNECT_REFRESH_LEASE_SECS=30")
#   BENCH_NO_BUILD=1  use the binaries already in target/release
#   BENCH_BIN_DIR     take mailconnect and seed_accounts from this directory instead
#                     (implies nothing about building; set BENCH_NO_BUILD=1 too)
#   BENCH_LABEL       what to write in the commit column (default: git HEAD)
#   BENCH_REPEAT      runs of each matrix entry (default 3); the report gives their median
#   BENCH_ALLOW_DIRTY=1  measure a tree with uncommitted changes (labelled +dirty);
#                     otherwise such a tree is refused: a result names the commit it measured
#   BENCH_REPORT      the markdown file whose generated section is replaced
#                     (default docs/benchmarks.md, between the refresh-results markers)
#
# Each run: a fresh database (a SQLite file in a temp dir, or `CREATE
# DATABASE bench_…` on the server, dropped afterwards) seeded by
# examples/seed_accounts.rs with N connected Microsoft accounts that are not
# due (refresh_due_at = now + 30 days); replica 1 starts, idles
# BENCH_IDLE_SECS with N rows stored, and its VmRSS/VmHWM are read; it
# stops. One UPDATE makes every account due (PostgreSQL: VACUUM ANALYZE
# after it), replica 2 starts and sweeps. Refreshes are counted at the stub
# (nginx stub_status, every 200 ms, so the database is not scanned while it
# works); the sweep ends when the stub has answered N token requests and the
# database confirms every account stored (`last_refresh_at IS NOT NULL`).
# Throughput = N / (time from the first to the last refresh).
# Integrity, checked for every run: the stub answered exactly N token
# requests (nobody refreshed twice, nobody was skipped) and no account ended
# failed or not connected; a run that breaks either is marked FAILED and the
# script exits 1 (after writing what it measured).
# The settings quoted in the report (database, pool size, concurrency, poll,
# lease, provider timeout) are the ones `serve` logged at start-up.
# One result line per run is appended to $BENCH_OUT (default
# target/bench-refresh/results.tsv); the report of this invocation (setup,
# and per matrix entry the median of its runs) is printed and written into
# $BENCH_REPORT.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
KEYS='k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8='
IDLE_SECS="${BENCH_IDLE_SECS:-8}"
SWEEP_LIMIT="${BENCH_SWEEP_LIMIT:-600}"
POLL_SECS="${BENCH_POLL_SECS:-1}"
OUT="${BENCH_OUT:-$ROOT/target/bench-refresh/results.tsv}"
RUNS="${BENCH_RUNS:-sqlite:10000:64 sqlite:100000:64 sqlite:1000000:64 postgres:10000:64 postgres:100000:64}"
REPEAT="${BENCH_REPEAT:-3}"
REPORT="${BENCH_REPORT:-$ROOT/docs/benchmarks.md}"
CLK_TCK="$(getconf CLK_TCK)"

log() { printf '[refresh.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
source "$ROOT/bench/common.sh"

if [[ "${1:-}" == one ]]; then
    [[ $# == 4 ]] || die "usage: $0 one sqlite|postgres COUNT CONCURRENCY"
    RUNS="$2:$3:$4"
fi

command -v nginx >/dev/null || die "nginx is missing: apt-get install -y nginx-light"
if [[ "$RUNS" == *sqlite* ]]; then command -v sqlite3 >/dev/null || die "sqlite3 is missing: apt-get install -y sqlite3"; fi
if [[ "$RUNS" == *postgres* ]]; then command -v psql >/dev/null || die "psql is missing: apt-get install -y postgresql-client"; fi

TMP="$(mktemp -d /tmp/mc-bench-refresh.XXXXXX)"
PIDS=()
PG_DBS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for p in "${PG_DBS[@]}"; do
        psql -q "$PG" -c "DROP DATABASE IF EXISTS $p" >/dev/null 2>&1 || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

# --- build, and a private copy of the binaries (others may rebuild target/) -------
if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    log "building (release)"
    cargo build --release --bin mailconnect --example seed_accounts >&2
fi
BIN_DIR="${BENCH_BIN_DIR:-target/release}"
cp "$BIN_DIR/mailconnect" "$TMP/"
cp "$BIN_DIR/examples/seed_accounts" "$TMP/" 2>/dev/null || cp "$BIN_DIR/seed_accounts" "$TMP/"
MC_BIN="$TMP/mailconnect"
SEED_BIN="$TMP/seed_accounts"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the provider stub --------------------------------------------------------------
STUB_PORT="$(free_port)"
mkdir -p "$TMP/nginx"
sed -e "s#__PORT__#$STUB_PORT#g; s#__PREFIX__#$TMP/nginx#g" bench/refresh-stub.conf >"$TMP/nginx/nginx.conf"
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" &
PIDS+=("$!")
STUB="http://127.0.0.1:$STUB_PORT"
for _ in $(seq 100); do curl -fsS "$STUB/stub_status" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "$STUB/stub_status" >/dev/null || die "nginx did not start (see $TMP/nginx/error.log)"
NGINX_WORKER="$(pgrep -P "${PIDS[0]}" | head -1)"
stub_requests() { curl -fsS "$STUB/stub_status" | awk 'NR == 3 {print $3}'; }

PG=""
if [[ "$RUNS" == *postgres* ]]; then
    PG="${BENCH_PG:-$(scripts/pg.sh start)}"
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; } # utime+stime, all threads
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }   # user+nice+system+irq+softirq
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
now_s() { date +%s.%N; }

sql() { # sql BACKEND URL STATEMENT -> first column of the answer
    if [[ "$1" == sqlite ]]; then
        sqlite3 -cmd '.timeout 30000' "${2#sqlite://}" "$3"
    else
        psql -qtAX "$2" -c "$3"
    fi
}

start_serve() { # start_serve BACKEND URL CONCURRENCY NAME -> sets SERVE_PID SERVE_PORT
    SERVE_PORT="$(free_port)"
    # shellcheck disable=SC2086
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
        MAILCONNECT_BIND="127.0.0.1:$SERVE_PORT" \
        DATABASE_URL="$2" \
        JWT_SECRET=bench-refresh-jwt-secret-0123456789 \
        OAUTH_STATE_SECRET=bench-refresh-state-secret-0123456 \
        TOKEN_ENCRYPTION_KEYS="$KEYS" \
        MICROSOFT_OAUTH_CLIENT_ID=11111111-2222-3333-4444-555555555555 \
        MICROSOFT_OAUTH_CLIENT_SECRET=bench-refresh-client-secret \
        MICROSOFT_OAUTH_AUTHORITY="$STUB" \
        MICROSOFT_GRAPH_URL="$STUB" \
        MAILCONNECT_REFRESH_POLL_SECS="$POLL_SECS" \
        MAILCONNECT_REFRESH_CONCURRENCY="$3" \
        MAILCONNECT_PROVIDER_RATE_LIMIT=100000 \
        MAILCONNECT_REFRESH_WARM_WINDOW_SECS=all \
        RUST_LOG=warn,mailconnect=info \
        MAILCONNECT_LOG_FORMAT=json \
        ${BENCH_EXTRA_ENV:-} \
        "$MC_BIN" serve >"$TMP/$4.out" 2>"$TMP/$4.err" &
    SERVE_PID=$!
    PIDS+=("$SERVE_PID")
    local i
    for i in $(seq 200); do
        if curl -fsS "http://127.0.0.1:$SERVE_PORT/readyz" >/dev/null 2>&1; then
            SERVE_SETTINGS="$(serve_settings "$TMP/$4.out" "$TMP/$4.err")" \
                || die "serve did not log its settings at start-up"
            return 0
        fi
        kill -0 "$SERVE_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$TMP/$4.err" >&2
    die "serve did not become ready"
}

serve_settings() { # the settings `serve` logged at start-up, in words
    python3 - "$@" <<'PY'
import json, sys
for path in sys.argv[1:]:
    for line in open(path):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("message") == "mailconnect listening":
            print(f"{e['database']}; refresh concurrency {e['refresh_concurrency']}, "
                  f"poll {e['refresh_poll_secs']} s, lease {e['refresh_lease_secs']} s, "
                  f"provider timeout {e['provider_timeout_secs']} s")
            sys.exit(0)
sys.exit(1)
PY
}

stop_serve() { # SIGTERM, bounded wait
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    local i
    for i in $(seq 300); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
}

mkdir -p "$(dirname "$OUT")"
HEADER='date\tcommit\tbackend\taccounts\tconcurrency\tseed_s\tidle_rss_kb\tidle_hwm_kb\tsweep_s\trefreshes_per_s\tsweep_hwm_kb\tserve_cores\tmachine_cores\tserve_cpu_us_per_refresh\tstub_requests\tnot_connected_or_failed\tintegrity\tsettings\n'
# A results file of an older layout is kept aside, not mixed in.
if [[ -f "$OUT" ]] && [[ "$(head -1 "$OUT")" != "$(printf "$HEADER" | head -1)" ]]; then
    mv "$OUT" "$OUT.old"
fi
[[ -f "$OUT" ]] || printf "$HEADER" >"$OUT"
THIS_RUN="$TMP/this-run.tsv"
printf "$HEADER" >"$THIS_RUN"
FAILED=0
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    [[ "${BENCH_ALLOW_DIRTY:-0}" == 1 ]] \
        || die "the tree has uncommitted changes: commit them (a result names the commit it measured) or set BENCH_ALLOW_DIRTY=1"
    COMMIT="$COMMIT+dirty"
fi
[[ -n "${BENCH_LABEL:-}" ]] && COMMIT="$BENCH_LABEL"

EXPANDED=""
for run in $RUNS; do
    for _ in $(seq "$REPEAT"); do EXPANDED="$EXPANDED $run"; done
done

n=0
for run in $EXPANDED; do
    IFS=: read -r backend count conc <<<"$run"
    n=$((n + 1))
    if [[ "$backend" == sqlite ]]; then
        url="sqlite://$TMP/bench$n.db"
    else
        name="bench_$$_$n"
        psql -q "$PG" -c "CREATE DATABASE $name" >/dev/null
        PG_DBS+=("$name")
        url="$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$PG" "$name")"
    fi
    log "run $n: $backend, $count accounts, concurrency $conc"

    # 1. seed, not due
    t0="$(now_s)"
    timeout 1800 "$SEED_BIN" --database-url "$url" --count "$count" --keys "$KEYS" --due-in 2592000 >&2
    seed_s="$(awk -v a="$t0" -v b="$(now_s)" 'BEGIN {printf "%.1f", b - a}')"
    [[ "$backend" == postgres ]] && psql -q "$url" -c "VACUUM ANALYZE accounts" >/dev/null

    # 2. idle replica
    start_serve "$backend" "$url" "$conc" "idle$n"
    sleep "$IDLE_SECS"
    idle_rss="$(status_kb "$SERVE_PID" VmRSS)"
    idle_hwm="$(status_kb "$SERVE_PID" VmHWM)"
    stop_serve
    log "idle: VmRSS ${idle_rss} kB, VmHWM ${idle_hwm} kB"

    # 3. everything due
    due=$(( $(date +%s) - 1 ))
    sql "$backend" "$url" "UPDATE accounts SET refresh_due_at = $due WHERE status = 'connected'" >/dev/null
    if [[ "$backend" == postgres ]]; then
        psql -q "$url" -c "VACUUM ANALYZE accounts" >/dev/null
    else
        sql "$backend" "$url" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null
    fi

    # 4. the sweep
    base="$(stub_requests)"
    base=$((base + 1)) # this poll
    polls=0
    start_serve "$backend" "$url" "$conc" "sweep$n"
    t_start="$(now_s)"
    t_first=""; t_end=""; cpu0=0; busy0=0; ng0=0; partial=
    deadline=$(( $(date +%s) + SWEEP_LIMIT ))
    while :; do
        r="$(stub_requests)"; polls=$((polls + 1))
        done_at_stub=$(( r - base - polls + 1 ))
        if [[ -z "$t_first" && $done_at_stub -gt 0 ]]; then
            t_first="$(now_s)"; cpu0="$(cpu_ticks "$SERVE_PID")"; busy0="$(machine_busy)"; ng0="$(cpu_ticks "$NGINX_WORKER")"
        fi
        if (( done_at_stub >= count )); then
            left="$(sql "$backend" "$url" "SELECT COUNT(*) FROM accounts WHERE last_refresh_at IS NULL")"
            if [[ "$left" == 0 ]]; then
                t_end="$(now_s)"; cpu1="$(cpu_ticks "$SERVE_PID")"; busy1="$(machine_busy)"; ng1="$(cpu_ticks "$NGINX_WORKER")"
                break
            fi
        fi
        if (( $(date +%s) >= deadline )); then
            # Bounded: report the rate so far, from the stub's count.
            log "sweep did not finish within ${SWEEP_LIMIT}s ($done_at_stub of $count refreshed): partial rate"
            t_end="$(now_s)"; cpu1="$(cpu_ticks "$SERVE_PID")"; busy1="$(machine_busy)"; ng1="$(cpu_ticks "$NGINX_WORKER")"
            partial="$done_at_stub"
            break
        fi
        kill -0 "$SERVE_PID" 2>/dev/null || { cat "$TMP/sweep$n.err" >&2; die "serve died during the sweep"; }
        sleep 0.2
    done
    sweep_hwm="$(status_kb "$SERVE_PID" VmHWM)"
    sweep_settings="$SERVE_SETTINGS"
    stop_serve # after SIGTERM nothing is in flight: the stub's count is final
    final_requests=$(( $(stub_requests) - base - polls ))
    bad="$(sql "$backend" "$url" "SELECT COUNT(*) FROM accounts WHERE status <> 'connected' OR last_error IS NOT NULL OR consecutive_failures > 0")"
    if [[ -n "$partial" ]]; then
        integrity="partial"
    elif [[ "$final_requests" == "$count" && "$bad" == 0 ]]; then
        integrity="ok"
    else
        integrity="FAILED: $final_requests token requests for $count accounts, $bad failed or not connected"
        FAILED=1
    fi
    if [[ -n "$t_end" && -n "$t_first" ]]; then
        read -r sweep_s rate serve_cores machine_cores us_per <<<"$(awk -v a="$t_first" -v b="$t_end" -v n="${partial:-$count}" \
            -v c0="$cpu0" -v c1="$cpu1" -v m0="$busy0" -v m1="$busy1" -v hz="$CLK_TCK" \
            'BEGIN { d = b - a; printf "%.2f %.0f %.2f %.2f %.0f\n", d, n / d, (c1 - c0) / hz / d, (m1 - m0) / hz / d, (c1 - c0) / hz * 1e6 / n }')"
    else
        sweep_s="timeout"; rate=0; serve_cores=0; machine_cores=0; us_per=0
    fi
    [[ -n "$partial" ]] && sweep_s="${sweep_s}(partial:$partial)"
    log "sweep: ${sweep_s}s, ${rate}/s, serve ${serve_cores} cores, machine ${machine_cores} cores, VmHWM ${sweep_hwm} kB, stub answered $final_requests, $bad accounts not connected/failed: $integrity"
    line="$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' \
        "$(date -u '+%Y-%m-%d %H:%M')" "$COMMIT" "$backend" "$count" "$conc" "$seed_s" \
        "$idle_rss" "$idle_hwm" "$sweep_s" "$rate" "$sweep_hwm" "$serve_cores" "$machine_cores" "$us_per" \
        "$final_requests" "$bad" "$integrity" "$sweep_settings")"
    echo "$line" >>"$OUT"
    echo "$line" >>"$THIS_RUN"

    if [[ "$backend" == sqlite ]]; then
        rm -f "$TMP/bench$n.db"*
    else
        psql -q "$PG" -c "DROP DATABASE IF EXISTS $name" >/dev/null
    fi
done

# --- the report: setup and the median of each matrix entry -------------------------
export NGINX_VERSION="$(nginx -v 2>&1 | sed 's/^nginx version: //')"
export PG_SETUP=""
if [[ -n "$PG" ]]; then
    PG_SETUP="$(psql -qtAX "$PG" -c "SELECT 'PostgreSQL ' || current_setting('server_version') || ' (fsync=' || current_setting('fsync') || ', synchronous_commit=' || current_setting('synchronous_commit') || ', full_page_writes=' || current_setting('full_page_writes') || ')'")"
fi
export MACHINE="$(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(awk '/^MemTotal:/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)"
export LOAD="$(cut -d' ' -f1-3 /proc/loadavg)" REPEAT IDLE_SECS
python3 - "$THIS_RUN" >"$TMP/report.md" <<'PY'
import csv, os, statistics, sys
E = os.environ
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
out = []
p = out.append
mib = lambda kb: f"{int(kb) / 1024:.1f} MiB" if str(kb).isdigit() else kb
groups = {}
for r in rows:
    groups.setdefault((r["backend"], int(r["accounts"]), int(r["concurrency"])), []).append(r)
commits = sorted({r["commit"] for r in rows})
dates = sorted(r["date"] for r in rows)
p(f"Generated by `bench/refresh.sh` ({dates[0]} to {dates[-1]} UTC, commit `{', '.join(commits)}`); "
  f"each row is the median of {E['REPEAT']} runs.")
p("")
p(f"- Machine: {E['MACHINE']}; load average at the end: {E['LOAD']}.")
settings = sorted({r["settings"] for r in rows})
for s in settings:
    p(f"- `serve`, as it logged at start-up: {s}.")
p(f"- Provider stub: {E['NGINX_VERSION']}, `bench/refresh-stub.conf`.")
if E.get("PG_SETUP"):
    p(f"- {E['PG_SETUP']}.")
p(f"- Idle RSS read after {E['IDLE_SECS']} s with the accounts stored.")
p("")
p("| backend | accounts | concurrency | refreshes/s (median) | runs: lowest–highest | sweep | idle VmRSS | sweep VmHWM | serve CPU/refresh | token requests at the stub | failed | integrity |")
p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for (backend, n, conc), rs in groups.items():
    rates = [int(r["refreshes_per_s"]) for r in rs]
    med = lambda k: statistics.median(float(r[k]) for r in rs)
    sweeps = [r["sweep_s"] for r in rs]
    sweep = f"{statistics.median(float(x) for x in sweeps):.1f} s" if all(x.replace('.', '', 1).isdigit() for x in sweeps) else ", ".join(sweeps)
    reqs = sorted({r["stub_requests"] for r in rs})
    failed = sorted({r["not_connected_or_failed"] for r in rs})
    integ = sorted({r["integrity"] for r in rs})
    p(f"| {backend} | {n:,} | {conc} | {int(statistics.median(rates)):,} | {min(rates):,}–{max(rates):,} | {sweep} "
      f"| {mib(int(med('idle_rss_kb')))} | {mib(int(med('sweep_hwm_kb')))} | {med('serve_cpu_us_per_refresh'):.0f} µs "
      f"| {', '.join(reqs)} | {', '.join(failed)} | {', '.join(integ)} |")
print("\n".join(out))
PY
cat "$TMP/report.md"
BEGIN='<!-- refresh-results: written by bench/refresh.sh -->'
END='<!-- /refresh-results -->'
write_section "$REPORT" "$TMP/report.md" "$BEGIN" "$END"
[[ "$FAILED" == 0 ]] || die "integrity: at least one run FAILED (see the table)"
