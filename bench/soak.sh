#!/usr/bin/env bash
# Soak (issue 10, "Prove it keeps holding"): one release `mailconnect serve`
# under mixed load for SOAK_DURATION (default 10 minutes), sampling its
# resident memory and open file descriptors every SOAK_INTERVAL seconds, and
# judging whether both stay flat. Figures in docs/benchmarks.md, "Soak".
#
#   bench/soak.sh                                # the full 10 minutes
#   SOAK_DURATION=30 SOAK_ACCOUNTS=10000 bench/soak.sh   # a quick form
#
# The load, all at once, all on loopback:
#   - wrk (Debian) on the API: the token route (service JWT, 100 mailboxes
#     of one tenant, round robin) and authorize (admin JWT), one each in
#     turn, with every 20th request the status route; SOAK_CONNECTIONS
#     connections, each waiting SOAK_DELAY_MS between requests;
#   - the background refresher over SOAK_ACCOUNTS (default 100,000)
#     connected Microsoft mailboxes, all due at the start (a sweep), then
#     due again every few minutes: the provider stub (nginx,
#     bench/soak-stub.conf) issues tokens for SOAK_EXPIRES_IN seconds
#     (default 900, with MAILCONNECT_REFRESH_LEAD_SECS=600) and fails 10%
#     of refreshes: 9% 503 (backed off, retried), 1% invalid_grant (the
#     mailbox turns needs_reauth);
#   - webhooks: each needs_reauth is an event, delivered to a local
#     receiver (the same nginx, answering 204).
# Samples (CSV): seconds, VmRSS kB (and its anonymous, file and shared
# parts), open fds, threads, token requests the stub answered, webhooks
# received, the SQLite WAL file's size, written to $SOAK_OUT_DIR (default
# target/soak). At the end: the start (first sample after SOAK_WARMUP
# seconds, default 60), end and peak of each, a least-squares trend over
# the samples after the warm-up, and two verdicts: within ±10% (the end and
# the trend carried over the window both within 10% of the start) and no
# growth (neither adds more than 10%).
#
# Knobs (environment): SOAK_DURATION (600), SOAK_INTERVAL (10),
#   SOAK_WARMUP (60), SOAK_ACCOUNTS (100000), SOAK_EXPIRES_IN (900),
#   SOAK_CONNECTIONS (8), SOAK_DELAY_MS (10), SOAK_PROFILE (release; debug
#   for a quick run without a release build), SOAK_NO_BUILD=1 (use the
#   binaries already built), SOAK_OUT_DIR (target/soak), SOAK_STRICT=1
#   (exit 1 when RSS or fds grew; it always exits 1 when the service died
#   or logged an error).
# Needs nginx and wrk (installed with apt-get when missing and root), curl,
# sqlite3, python3. Every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DURATION="${SOAK_DURATION:-600}"
INTERVAL="${SOAK_INTERVAL:-10}"
WARMUP="${SOAK_WARMUP:-60}"
ACCOUNTS="${SOAK_ACCOUNTS:-100000}"
EXPIRES_IN="${SOAK_EXPIRES_IN:-900}"
CONNECTIONS="${SOAK_CONNECTIONS:-8}"
DELAY_MS="${SOAK_DELAY_MS:-10}"
PROFILE="${SOAK_PROFILE:-release}"
OUT_DIR="${SOAK_OUT_DIR:-$ROOT/target/soak}"
KEYS='k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8='
JWT_SECRET=soak-jwt-secret-0123456789abcdef0123
TENANT=tenant-0000000

log() { printf '[soak %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing: ${missing[*]} (apt-get install -y ${missing[*]})"
    log "installing ${missing[*]}"
    apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for tool in curl python3 nginx wrk sqlite3; do command -v "$tool" >/dev/null || die "$tool not found"; done

TMP="$(mktemp -d /tmp/mc-soak.XXXXXX)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- binaries: a private copy (others may rebuild target/ meanwhile) ----------
if [[ -z "${SOAK_NO_BUILD:-}" ]]; then
    log "building ($PROFILE)"
    flag=(); [[ "$PROFILE" == release ]] && flag=(--release)
    cargo build "${flag[@]}" --quiet --bin mailconnect --example seed_accounts
fi
cp "target/$PROFILE/mailconnect" "target/$PROFILE/examples/seed_accounts" "$TMP/"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
STUB_PORT="$(free_port)"
HOOK_PORT="$(free_port)"
MC_PORT="$(free_port)"
STUB="http://127.0.0.1:$STUB_PORT"
MC="http://127.0.0.1:$MC_PORT"

# --- the provider stub and webhook receiver ------------------------------------
mkdir -p "$TMP/nginx"
sed -e "s#__PORT__#$STUB_PORT#g; s#__HOOK_PORT__#$HOOK_PORT#g; s#__PREFIX__#$TMP/nginx#g; s#__EXPIRES_IN__#$EXPIRES_IN#g" \
    bench/soak-stub.conf >"$TMP/nginx/nginx.conf"
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" &
PIDS+=("$!")
for _ in $(seq 100); do curl -fsS "$STUB/stub_status" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "$STUB/stub_status" >/dev/null || die "nginx did not start (see $TMP/nginx/error.log)"

# --- accounts, all due now -------------------------------------------------------
DB="$TMP/soak.db"
log "seeding $ACCOUNTS accounts"
timeout 1200 "$TMP/seed_accounts" --database-url "sqlite://$DB" --count "$ACCOUNTS" --keys "$KEYS" --due-in -1 >&2
mapfile -t IDS < <(sqlite3 "$DB" "SELECT id FROM accounts WHERE tenant_id = '$TENANT' ORDER BY id LIMIT 100")
((${#IDS[@]})) || die "no accounts seeded for $TENANT"

# --- the service ------------------------------------------------------------------
env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
    MAILCONNECT_BIND="127.0.0.1:$MC_PORT" \
    DATABASE_URL="sqlite://$DB" \
    JWT_SECRET="$JWT_SECRET" \
    OAUTH_STATE_SECRET=soak-state-secret-0123456789abcdef01 \
    TOKEN_ENCRYPTION_KEYS="$KEYS" \
    MICROSOFT_OAUTH_CLIENT_ID=11111111-2222-3333-4444-555555555555 \
    MICROSOFT_OAUTH_CLIENT_SECRET=soak-client-secret \
    MICROSOFT_OAUTH_AUTHORITY="$STUB" \
    MICROSOFT_GRAPH_URL="$STUB" \
    MAILCONNECT_REFRESH_LEAD_SECS=600 \
    MAILCONNECT_REFRESH_POLL_SECS=1 \
    MAILCONNECT_PROVIDER_RATE_LIMIT=100000 \
    MAILCONNECT_REFRESH_WARM_WINDOW_SECS=all \
    MAILCONNECT_WEBHOOK_URL="http://127.0.0.1:$HOOK_PORT/hooks" \
    MAILCONNECT_WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw \
    MAILCONNECT_WEBHOOK_POLL_MS=500 \
    RUST_LOG=warn \
    "$TMP/mailconnect" serve >"$TMP/serve.out" 2>"$TMP/serve.err" &
MC_PID=$!
PIDS+=("$MC_PID")
for _ in $(seq 300); do
    curl -fsS "$MC/readyz" >/dev/null 2>&1 && break
    kill -0 "$MC_PID" 2>/dev/null || { cat "$TMP/serve.err" >&2; die "serve exited"; }
    sleep 0.1
done
curl -fsS "$MC/readyz" >/dev/null || die "serve did not become ready"
jwt() { JWT_SECRET="$JWT_SECRET" "$TMP/mailconnect" jwt --tenant "$TENANT" --role "$1" --sub soak --lifetime 1d; }
ADMIN_JWT="$(jwt admin)"
SERVICE_JWT="$(jwt service)"

# --- sampling -----------------------------------------------------------------------
mkdir -p "$OUT_DIR"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
CSV="$OUT_DIR/soak-$STAMP.csv"
echo "seconds,rss_kb,rss_anon_kb,rss_file_kb,rss_shmem_kb,fds,threads,token_requests,webhooks_received,wal_kb" >"$CSV"
lines() { [[ -f "$1" ]] && wc -l <"$1" || echo 0; }
sample() { # sample SECONDS
    local st="/proc/$MC_PID/status" fds wal
    kb() { awk -v k="$1:" '$1 == k {print $2}' "$st"; }
    fds="$(find "/proc/$MC_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)"
    wal=$(( $(stat -c %s "$DB-wal" 2>/dev/null || echo 0) / 1024 ))
    echo "$1,$(kb VmRSS),$(kb RssAnon),$(kb RssFile),$(kb RssShmem),$fds,$(kb Threads),$(lines "$TMP/nginx/token.log"),$(lines "$TMP/nginx/hooks.log"),$wal" >>"$CSV"
}
T0="$(date +%s)"
sample 0
(
    next=$INTERVAL
    while ((next <= DURATION)); do
        sleep $((T0 + next - $(date +%s))) 2>/dev/null || true
        kill -0 "$MC_PID" 2>/dev/null || exit 0
        sample "$next"
        next=$((next + INTERVAL))
    done
) &
SAMPLER=$!
PIDS+=("$SAMPLER")

# --- the API load -------------------------------------------------------------------
{
    echo "local ids = {"
    printf '  "%s",\n' "${IDS[@]}"
    echo "}"
    cat <<LUA
local admin = "Bearer $ADMIN_JWT"
local service = "Bearer $SERVICE_JWT"
local n = 0
function request()
  n = n + 1
  if n % 20 == 0 then
    return wrk.format("GET", "/api/oauth/status", {["Authorization"] = admin})
  elseif n % 2 == 0 then
    return wrk.format("POST", "/api/oauth/microsoft/authorize",
      {["Authorization"] = admin, ["Content-Type"] = "application/json"}, '{"return_to":"/soak"}')
  end
  local id = ids[math.floor(n / 2) % #ids + 1]
  return wrk.format("POST", "/api/accounts/" .. id .. "/token", {["Authorization"] = service})
end
function delay()
  return $DELAY_MS
end
LUA
} >"$TMP/load.lua"
log "load for ${DURATION}s: wrk -c$CONNECTIONS (${DELAY_MS} ms between requests per connection), refresher over $ACCOUNTS accounts"
timeout $((DURATION + 60)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s --latency -s "$TMP/load.lua" "$MC" >"$TMP/wrk.out" 2>&1 || true
wait "$SAMPLER" 2>/dev/null || true
kill -0 "$MC_PID" 2>/dev/null || { tail -20 "$TMP/serve.err" >&2; die "serve died during the soak"; }

# --- what happened ------------------------------------------------------------------
cp "$TMP/wrk.out" "$OUT_DIR/soak-$STAMP.wrk.txt"
STATUS="$(sqlite3 "$DB" "SELECT status || '=' || COUNT(*) FROM accounts GROUP BY status" | paste -sd' ')"
OUTBOX="$(sqlite3 "$DB" "SELECT state || '=' || COUNT(*) FROM webhook_outbox GROUP BY state" | paste -sd' ')"
OUTCOMES="$(awk '{print $2}' "$TMP/nginx/token.log" 2>/dev/null | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')"
ERRORS="$(grep -cE '(^|[^A-Za-z_])ERROR([^A-Za-z_]|$)|panicked' "$TMP/serve.err" || true)"
export CSV WARMUP DURATION ACCOUNTS STATUS OUTBOX OUTCOMES ERRORS PROFILE CONNECTIONS DELAY_MS EXPIRES_IN
export WRK_SUMMARY="$(grep -E 'Requests/sec|requests in|Non-2xx|Socket errors|50%|99%' "$TMP/wrk.out" | sed 's/^ *//' | paste -sd';')"
export COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 - <<'PY' | tee "$OUT_DIR/soak-$STAMP.md"
import csv, os
E = os.environ
rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(open(E["CSV"]))]
warm = float(E["WARMUP"])
window = [r for r in rows if r["seconds"] >= warm] or rows
def trend(key):
    xs = [r["seconds"] for r in window]; ys = [r[key] for r in window]
    n = len(xs); mx = sum(xs) / n; my = sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    return slope, slope * (xs[-1] - xs[0]) / my * 100 if my else 0.0
verdicts = []
print(f"Soak: {E['DURATION']} s, {E['ACCOUNTS']} accounts, {E['PROFILE']} build, commit {E['COMMIT']}; "
      f"samples every {int(rows[1]['seconds'] - rows[0]['seconds']) if len(rows) > 1 else 0} s "
      f"({len(rows)}), judged after a {E['WARMUP']} s warm-up")
print()
print("| | at 0 s | start | end | peak | trend | end vs start | trend over the window | within ±10% | no growth |")
print("|---|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|")
for key, label, unit, div in (("rss_kb", "VmRSS", "MiB", 1024), ("rss_anon_kb", "of it RssAnon (heap)", "MiB", 1024),
                              ("rss_file_kb", "of it RssFile (binary, mapped files)", "MiB", 1024), ("fds", "open fds", "", 1),
                              ("threads", "threads", "", 1), ("wal_kb", "SQLite WAL file", "MiB", 1024)):
    first, start, end = rows[0][key], window[0][key], window[-1][key]
    peak = max(r[key] for r in rows)
    slope, over = trend(key)
    change = (end - start) / start * 100 if start else 0.0
    within = abs(change) <= 10 and abs(over) <= 10
    no_growth = change <= 10 and over <= 10
    if key in ("rss_kb", "fds"):
        verdicts.append((within, no_growth))
    f = (lambda v: f"{v / div:.1f} {unit}".strip()) if div != 1 else (lambda v: f"{v:.0f}")
    per_min = slope * 60 / div
    yes = lambda b: "yes" if b else "**no**"
    print(f"| {label} | {f(first)} | {f(start)} | {f(end)} | {f(peak)} | {per_min:+.3f}{(' ' + unit) if unit else ''}/min "
          f"| {change:+.1f}% | {over:+.1f}% | {yes(within)} | {yes(no_growth)} |")
print()
last = rows[-1]
secs = last["seconds"] or 1
print(f"- Refresh requests answered by the stub: {int(last['token_requests'])} "
      f"({last['token_requests'] / secs:.0f}/s); outcomes: {E['OUTCOMES'].strip()}")
print(f"- Webhooks received: {int(last['webhooks_received'])}; outbox: {E['OUTBOX'] or 'empty'}")
print(f"- Accounts at the end: {E['STATUS']}")
print(f"- API load (wrk): {E['WRK_SUMMARY']}")
print(f"- Error lines in the service's log: {E['ERRORS']}")
print()
within = all(w for w, _ in verdicts)
no_growth = all(g for _, g in verdicts)
print(f"RSS and open fds within 10% of the start: {'yes' if within else 'no'}; "
      f"growth beyond 10% (end or trend): {'none' if no_growth else 'yes'}")
open(os.path.join(os.path.dirname(E["CSV"]), "last-verdict"), "w").write("flat\n" if no_growth else "growing\n")
PY
log "samples: $CSV"
if [[ "$ERRORS" != 0 ]]; then
    grep -E '(^|[^A-Za-z_])ERROR([^A-Za-z_]|$)|panicked' "$TMP/serve.err" | head -20 >&2
    die "the service logged $ERRORS error lines (above)"
fi
if [[ "${SOAK_STRICT:-}" == 1 ]] && ! grep -qx flat "$OUT_DIR/last-verdict"; then
    die "RSS or open fds grew (above)"
fi
