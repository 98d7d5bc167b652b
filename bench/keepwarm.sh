#!/usr/bin/env bash
# Adaptive keep-warm benchmark (issue 16): what the background refresher
# spends when only a tenth of the mailboxes is in use, against keeping every
# one warm (`MAILCONNECT_REFRESH_WARM_WINDOW_SECS=all`, the behaviour before).
#
#   bench/keepwarm.sh          # release build, 100,000 accounts, 10 % in use
#
# One `mailconnect serve` on SQLite against an nginx provider stub
# (bench/refresh-stub.conf with a shorter `expires_in`), twice: `keepwarm`
# (the default window) and `all`. The same load both times: wrk calls the
# token route for the active accounts only (BENCH_ACTIVE of BENCH_ACCOUNTS,
# spread over their tenants, each with its tenant's service JWT).
#
# The clock is shrunk through settings only: the stub's tokens live
# BENCH_EXPIRES s (480) and the refresher renews BENCH_LEAD s (330) ahead,
# less up to a quarter as jitter, so a warm account is renewed every
# ≈ 109 s instead of ≈ 2,925 s with Microsoft's hour-long tokens and the
# default lead of 600 s: the clock runs K ≈ 26.8 times faster. (The lead
# stays above the token route's fixed 5-minute margin, so the load never
# refreshes on demand what the refresher keeps warm; that margin is why the
# tokens cannot be made shorter.) The warm window (1 day) and the
# keep-alive interval (7 days, through MAILCONNECT_REFRESH_IDLE_SECS) are
# divided by K too. Before each run the seeded accounts are spread as in a
# steady state: due times uniform over a warm cycle (active, or every
# account under `all`) or over the keep-alive interval (idle).
#
# Measured over BENCH_DURATION s (300, after BENCH_WARMUP s of load): the
# provider requests by reason (mailconnect's own
# mailconnect_provider_token_requests_total, checked against the stub's
# request count), scaled to a simulated day (× 86,400 / K / duration) per
# active and per idle account; the token route's p50/p99 and non-2xx (wrk
# --latency); serve's CPU under that load, and for BENCH_QUIET s (60)
# after it without load (the refresher and housekeeping alone). Results go to stdout and
# target/bench-keepwarm/report.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ACCOUNTS="${BENCH_ACCOUNTS:-100000}"
ACTIVE="${BENCH_ACTIVE:-10000}"
EXPIRES="${BENCH_EXPIRES:-480}"
LEAD="${BENCH_LEAD:-330}"
DURATION="${BENCH_DURATION:-300}"
WARMUP="${BENCH_WARMUP:-60}"
QUIET="${BENCH_QUIET:-60}"
CONNECTIONS="${BENCH_CONNECTIONS:-16}"
MODES="${BENCH_MODES:-keepwarm all}"
REAL_CYCLE=2925 # 3,599 - 600 - 150/2: Microsoft's tokens, the default lead

log() { printf '[keepwarm.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in cargo nginx wrk sqlite3 curl python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y nginx-light wrk sqlite3)"
done

# The shrunk clock.
read -r CYCLE K WINDOW KEEPALIVE < <(python3 - "$EXPIRES" "$LEAD" "$REAL_CYCLE" <<'PY'
import sys
e, lead, real = map(float, sys.argv[1:])
cycle = e - lead - lead / 8            # mean jitter: a quarter of the lead, halved
k = real / cycle
print(round(cycle), f"{k:.2f}", round(86400 / k), round(7 * 86400 / k))
PY
)
(( EXPIRES - LEAD - LEAD / 4 > 10 )) || die "BENCH_EXPIRES must exceed BENCH_LEAD by more than a quarter of it"
(( LEAD > 300 )) || die "BENCH_LEAD must exceed the token route's 5-minute margin"

TMP="$(mktemp -d /tmp/mc-bench-keepwarm.XXXXXX)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    log "building (release)"
    cargo build --release --bin mailconnect --example seed_accounts >&2
fi
cp target/release/mailconnect "$TMP/"
cp target/release/examples/seed_accounts "$TMP/"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK="$(getconf CLK_TCK)"

# --- the provider stub: tokens of BENCH_EXPIRES s ----------------------------------
STUB_PORT="$(free_port)"
mkdir -p "$TMP/nginx"
sed -e "s#__PORT__#$STUB_PORT#g; s#__PREFIX__#$TMP/nginx#g; s#\"expires_in\":3599,\"ext_expires_in\":3599#\"expires_in\":$EXPIRES,\"ext_expires_in\":$EXPIRES#" \
    bench/refresh-stub.conf >"$TMP/nginx/nginx.conf"
grep -q "\"expires_in\":$EXPIRES," "$TMP/nginx/nginx.conf" || die "could not set expires_in in the stub"
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" &
PIDS+=("$!")
STUB="http://127.0.0.1:$STUB_PORT"
for _ in $(seq 100); do curl -fsS "$STUB/stub_status" >/dev/null 2>&1 && break; sleep 0.1; done
stub_requests() { curl -fsS "$STUB/stub_status" | awk 'NR == 3 {print $3}'; }

JWT_SECRET=bench-keepwarm-jwt-secret-0123456789
KEYS='k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8='

# provider token requests by reason, from serve's /metrics
by_reason() { # by_reason PORT -> "on_demand keep_warm keep_alive"
    curl -fsS "http://127.0.0.1:$1/metrics" | python3 -c '
import re, sys
n = {"on_demand": 0, "keep_warm": 0, "keep_alive": 0}
for line in sys.stdin:
    m = re.match(r"mailconnect_provider_token_requests_total\{(.*)\} (\S+)", line)
    if m:
        r = re.search(r"reason=\"(\w+)\"", m.group(1)).group(1)
        n[r] = n.get(r, 0) + float(m.group(2))
print(int(n["on_demand"]), int(n["keep_warm"]), int(n["keep_alive"]))'
}

run_mode() { # run_mode keepwarm|all -> appends one line to $TMP/results
    local mode="$1" db="$TMP/$1.db" port window
    rm -f "$db"*
    log "$mode: seeding $ACCOUNTS accounts"
    "$TMP/seed_accounts" --database-url "sqlite://$db" --count "$ACCOUNTS" --keys "$KEYS" --due-in 2592000 >/dev/null
    # A steady state: active accounts (the first tenants) used and due
    # within a warm cycle; idle ones due within the keep-alive interval; under
    # `all` every account is due within a warm cycle.
    local now; now="$(date +%s)"
    sqlite3 -cmd '.timeout 30000' "$db" "
        CREATE TEMP TABLE active AS SELECT id FROM accounts ORDER BY tenant_id, id LIMIT $ACTIVE;
        UPDATE accounts SET last_used_at = $now, refresh_due_at = $now + abs(random()) % $CYCLE
            WHERE id IN (SELECT id FROM active);
        UPDATE accounts SET refresh_due_at = $now + abs(random()) % $( [[ $mode == all ]] && echo "$CYCLE" || echo "$KEEPALIVE" )
            WHERE id NOT IN (SELECT id FROM active);
        UPDATE accounts SET token_expires_at = refresh_due_at + $LEAD, last_refresh_at = $now;"
    sqlite3 "$db" "SELECT id || ' ' || tenant_id FROM accounts ORDER BY tenant_id, id LIMIT $ACTIVE" >"$TMP/active.txt"
    JWT_SECRET="$JWT_SECRET" python3 - "$TMP/active.txt" "$TMP/requests.txt" <<'PY'
import base64, hashlib, hmac, json, os, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
enc = lambda o: b64(json.dumps(o, separators=(",", ":")).encode())
key = os.environ["JWT_SECRET"].encode()
jwts = {}
with open(sys.argv[2], "w") as out:
    for line in open(sys.argv[1]):
        acc, tenant = line.split()
        if tenant not in jwts:
            head = enc({"alg": "HS256", "typ": "JWT"})
            body = enc({"sub": "bench-worker", "tenant_id": tenant, "role": "service",
                        "exp": int(time.time()) + 86400})
            sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
            jwts[tenant] = f"{head}.{body}.{b64(sig)}"
        out.write(f"/api/accounts/{acc}/token {jwts[tenant]}\n")
PY
    cat >"$TMP/token.lua" <<LUA
local reqs = {}
for line in io.lines("$TMP/requests.txt") do
    local path, jwt = line:match("(%S+) (%S+)")
    reqs[#reqs + 1] = wrk.format("POST", path, { ["Authorization"] = "Bearer " .. jwt, ["Content-Length"] = "0" }, "")
end
math.randomseed(os.time())
request = function() return reqs[math.random(#reqs)] end
LUA
    window="$WINDOW"; [[ "$mode" == all ]] && window=all
    port="$(free_port)"
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
        MAILCONNECT_BIND="127.0.0.1:$port" DATABASE_URL="sqlite://$db" \
        JWT_SECRET="$JWT_SECRET" OAUTH_STATE_SECRET=bench-keepwarm-state-secret-01234567 \
        TOKEN_ENCRYPTION_KEYS="$KEYS" \
        MICROSOFT_OAUTH_CLIENT_ID=11111111-2222-3333-4444-555555555555 \
        MICROSOFT_OAUTH_CLIENT_SECRET=bench-keepwarm-client-secret \
        MICROSOFT_OAUTH_AUTHORITY="$STUB" MICROSOFT_GRAPH_URL="$STUB" \
        MAILCONNECT_REFRESH_LEAD_SECS="$LEAD" MAILCONNECT_REFRESH_IDLE_SECS="$KEEPALIVE" \
        MAILCONNECT_REFRESH_WARM_WINDOW_SECS="$window" MAILCONNECT_REFRESH_POLL_SECS=1 \
        MAILCONNECT_REFRESH_CONCURRENCY=64 MAILCONNECT_PROVIDER_RATE_LIMIT=100000 \
        RUST_LOG=warn \
        "$TMP/mailconnect" serve >"$TMP/$mode.out" 2>"$TMP/$mode.err" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || die "$mode: serve did not start: $(tail -5 "$TMP/$mode.err")"
    log "$mode: warm-up, ${WARMUP}s of load"
    wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -s "$TMP/token.lua" "http://127.0.0.1:$port" >/dev/null
    local r0 s0 c0 t0 r1 s1 c1 t1
    r0="$(by_reason "$port")"; s0="$(stub_requests)"; c0="$(cpu_ticks "$pid")"; t0="$(date +%s.%N)"
    log "$mode: measuring, ${DURATION}s of load"
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$TMP/token.lua" "http://127.0.0.1:$port" >"$TMP/$mode.wrk"
    r1="$(by_reason "$port")"; s1="$(stub_requests)"; c1="$(cpu_ticks "$pid")"; t1="$(date +%s.%N)"
    # The refresher alone: the same time again without load.
    log "$mode: ${QUIET}s without load"
    local cq0 tq0 cq1 tq1
    cq0="$(cpu_ticks "$pid")"; tq0="$(date +%s.%N)"
    sleep "$QUIET"
    cq1="$(cpu_ticks "$pid")"; tq1="$(date +%s.%N)"
    local quiet_cores
    quiet_cores="$(python3 -c "print(f'{($cq1 - $cq0) / $CLK_TCK / ($tq1 - $tq0):.3f}')")"
    local errors; errors="$(grep -cE '(^|[^A-Za-z_])ERROR([^A-Za-z_]|$)|panicked' "$TMP/$mode.err" || true)"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$mode" "$TMP/$mode.wrk" "$r0" "$r1" "$s0" "$s1" "$c0" "$c1" "$t0" "$t1" "$CLK_TCK" "$K" "$ACCOUNTS" "$ACTIVE" "$errors" "$quiet_cores" >>"$TMP/results" <<'PY'
import re, sys
mode, wrkf, r0, r1, s0, s1, c0, c1, t0, t1, tck, k, n, active, errors, quiet = sys.argv[1:]
w = open(wrkf).read()
d = [b - a for a, b in zip(map(int, r0.split()), map(int, r1.split()))]
secs = float(t1) - float(t0)
stub = int(s1) - int(s0) - 1  # less this script's own stub_status read
day = 86400 / float(k) / secs  # measured window -> one simulated day
n, active = int(n), int(active)
idle = n - active
lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", w, re.M))
rps = re.search(r"Requests/sec:\s+(\S+)", w).group(1)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", w)
on_demand, keep_warm, keep_alive = d
cores = (int(c1) - int(c0)) / int(tck) / secs
print("\t".join(map(str, [mode, f"{secs:.0f}", on_demand, keep_warm, keep_alive, stub,
    f"{(on_demand + keep_warm) * day / active:.1f}" if mode != "all" else f"{(on_demand + keep_warm + keep_alive) * day / n:.1f}",
    f"{keep_alive * day / idle:.3f}" if mode != "all" else "-",
    f"{(on_demand + keep_warm + keep_alive) * day:.0f}",
    rps, lat.get("50"), lat.get("99"), non2xx.group(1) if non2xx else 0, f"{cores:.2f}", quiet, errors])))
PY
    log "$mode: $(tail -1 "$TMP/results")"
}

: >"$TMP/results"
for mode in $MODES; do run_mode "$mode"; done

OUT_DIR="target/bench-keepwarm"
mkdir -p "$OUT_DIR"
python3 - "$TMP/results" "$ACCOUNTS" "$ACTIVE" "$EXPIRES" "$LEAD" "$CYCLE" "$K" "$WINDOW" "$KEEPALIVE" "$(git rev-parse --short HEAD)" <<'PY' | tee "$OUT_DIR/report.md"
import sys
res, n, active, e, lead, cycle, k, window, keepalive, commit = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(res) if l.strip()]
print(f"Generated by `bench/keepwarm.sh` (commit `{commit}`): {n} accounts, {active} in use; "
      f"tokens of {e} s, lead {lead} s: a warm cycle of ≈ {cycle} s, the clock {k}× faster than with "
      f"hour-long tokens (warm window {window} s, keep-alive {keepalive} s).\n")
print("| mode | measured | on_demand | keep_warm | keep_alive | requests at the stub | per active account per day | per idle account per day | all accounts per day | token route req/s | p50 | p99 | non-2xx | serve CPU under load (cores) | serve CPU without load: the refresher (cores) | errors logged |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    mode, secs, od, kw, ka, stub, pa, pi, tot, rps, p50, p99, bad, cores, quiet, errors = r
    if mode == "all":
        pa = f"{pa} (every account)"
    print(f"| {mode} | {secs} s | {od} | {kw} | {ka} | {stub} | {pa} | {pi} | {tot} | {rps} | {p50} | {p99} | {bad} | {cores} | {quiet} | {errors} |")
tot = {r[0]: float(r[8]) for r in rows}
if "all" in tot and "keepwarm" in tot and tot["keepwarm"]:
    print(f"\nProvider traffic, keep-warm against all warm: **{tot['all'] / tot['keepwarm']:.1f}× less**.")
PY
