#!/usr/bin/env bash
# Issue 12's app-token benchmark: many `app` mailboxes of one Microsoft
# directory kept fresh, with the provider seeing one token request per
# renewal however many mailboxes there are, while workers ask for their
# tokens all along.
#
# The clock is shrunk through settings, not faked in the code: the sandbox
# issues app tokens that live APP_BENCH_LIFETIME seconds (default 560, where
# Microsoft's live 3599) and mailconnect renews them
# MAILCONNECT_REFRESH_LEAD_SECS = 400 ahead of expiry (plus up to a quarter
# of that of jitter), so a renewal comes due every 59 to 159 s instead of
# every 37 to 50 minutes (with the default lead of 600 s). The lead stays
# above the token route's own margin (300 s: it renews a token with less
# left itself), as the defaults do, so workers never wait for a renewal.
#
# Steps: release build; the sandbox (directory 72f988bf-… administered by its
# default user) and `mailconnect serve` on SQLite; an admin consent through
# the sandbox; one app mailbox through the API, then APP_BENCH_MAILBOXES - 1
# more written straight into the database (as many admins adding them would
# have); wrk on the token route over all of them (random mailbox per request)
# for APP_BENCH_DURATION; then the counts.
#
# The run checks itself and fails (exit 1) when a token-route answer was not
# 2xx, when a socket error happened, or when the app token requests exceed
# one per renewal period (duration / shortest renewal interval, + 2 for the
# consent's and the first). Prints a markdown report and writes it between
# the app-token-results markers of APP_BENCH_OUT (default docs/benchmarks.md).
#
# Knobs: APP_BENCH_MAILBOXES (10000), APP_BENCH_DURATION (300s),
#   APP_BENCH_LIFETIME (560), APP_BENCH_CONNECTIONS (32), BENCH_SKIP_BUILD=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MAILBOXES="${APP_BENCH_MAILBOXES:-10000}"
DURATION="${APP_BENCH_DURATION:-300s}"
LIFETIME="${APP_BENCH_LIFETIME:-560}"
CONNECTIONS="${APP_BENCH_CONNECTIONS:-32}"
LEAD=400
REL="$ROOT/target/release"
DIRECTORY=72f988bf-86f1-41af-91ab-2d7cd011db47

log() { echo "app-bench: $*" >&2; }
die() { echo "app-bench: $*" >&2; exit 1; }
source "$ROOT/bench/common.sh"
for tool in cargo wrk curl python3; do
    command -v "$tool" >/dev/null || die "$tool not found (wrk: apt-get install -y wrk)"
done
(( LIFETIME > LEAD + LEAD / 4 )) || die "APP_BENCH_LIFETIME must exceed $((LEAD + LEAD / 4)) s (the lead and its jitter)"

TMP="$(mktemp -d -t mailconnect-app-bench.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    log "building release"
    timeout 1800 cargo build --release --workspace --bins >&2
fi

read -r SB_PORT MC_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
MC="http://127.0.0.1:$MC_PORT"
REDIRECT_URI="$MC/api/oauth/microsoft/callback"
CLIENT_SECRET="bench-secret-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
ENC_KEY="bench:$(head -c 32 /dev/urandom | base64 -w0)"
ADMIN_JWT="$(mint admin)"
SERVICE_JWT="$(mint service)"

"$REL/mailconnect-sandbox" --bind "127.0.0.1:$SB_PORT" --client-id bench-client \
    --client-secret "$CLIENT_SECRET" --redirect-uri "$REDIRECT_URI" \
    --access-token-lifetime "$LIFETIME" >"$TMP/sandbox.out" &
PIDS+=("$!"); SB_PID=$!
SANDBOX="http://127.0.0.1:$SB_PORT"
wait_http "$SANDBOX/common/v2.0/.well-known/openid-configuration" sandbox "$SB_PID"

env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
    MAILCONNECT_BIND="127.0.0.1:$MC_PORT" DATABASE_URL="sqlite://$TMP/bench.db" \
    JWT_SECRET="$JWT_SECRET" OAUTH_STATE_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')" \
    TOKEN_ENCRYPTION_KEYS="$ENC_KEY" \
    MICROSOFT_OAUTH_CLIENT_ID=bench-client MICROSOFT_OAUTH_CLIENT_SECRET="$CLIENT_SECRET" \
    MICROSOFT_OAUTH_REDIRECT_URI="$REDIRECT_URI" MICROSOFT_OAUTH_AUTHORITY="$SANDBOX" \
    MICROSOFT_GRAPH_URL="$SANDBOX" \
    MAILCONNECT_REFRESH_LEAD_SECS="$LEAD" MAILCONNECT_REFRESH_POLL_SECS=1 \
    MAILCONNECT_PROVIDER_RATE_LIMIT=100000 \
    RUST_LOG=warn \
    "$REL/mailconnect" serve >"$TMP/mailconnect.out" 2>"$TMP/mailconnect.err" &
PIDS+=("$!"); MC_PID=$!
wait_http "$MC/healthz" mailconnect "$MC_PID"

post() { # post PATH BODY OUT -> status
    curl -sS --max-time 20 -o "$3" -w '%{http_code}' -X POST -H "Authorization: Bearer $ADMIN_JWT" \
        -H 'content-type: application/json' -d "$2" "$MC$1"
}
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
[[ "$(post /api/oauth/microsoft/admin-consent '{}' "$TMP/consent.json")" == 200 ]] \
    || die "admin consent: $(cat "$TMP/consent.json")"
CB="$(curl -sS --max-time 10 -o /dev/null -w '%{redirect_url}' "$(field "$TMP/consent.json" authorization_url)")"
LANDED="$(curl -sS --max-time 20 -o /dev/null -w '%{redirect_url}' "$CB")"
[[ "$LANDED" == *"oauth=admin_consented"* ]] || die "admin consent landed on $LANDED"
[[ "$(post /api/accounts '{"kind":"app","email":"mailbox0@contoso.com"}' "$TMP/app.json")" == 201 ]] \
    || die "adding an app mailbox: $(cat "$TMP/app.json")"
log "admin consent given; seeding $MAILBOXES app mailboxes"
python3 - "$TMP/bench.db" "$MAILBOXES" "$DIRECTORY" "$TMP/ids.lua" <<'PY'
import sqlite3, sys, time, uuid
db, n, directory, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
con = sqlite3.connect(db, timeout=30)
now = int(time.time())
first = con.execute("SELECT id FROM accounts WHERE kind = 'app'").fetchone()[0]
ids = [first] + [str(uuid.uuid4()) for _ in range(n - 1)]
con.executemany(
    "INSERT INTO accounts (id, tenant_id, provider, email, auth_type, status, scopes, kind,"
    " directory, connected_at, consecutive_failures, created_at, updated_at)"
    " VALUES (?, 'bench-tenant', 'microsoft', ?, 'oauth', 'connected', '', 'app', ?, ?, 0, ?, ?)",
    [(i, f"mailbox{k}@contoso.com", directory, now, now, now) for k, i in enumerate(ids) if k > 0])
con.commit()
with open(out, "w") as f:
    f.write("ids = {" + ",".join(f'"{i}"' for i in ids) + "}\n")
PY

cat >"$TMP/load.lua" <<LUA
dofile("$TMP/ids.lua")
wrk.method = "POST"
wrk.body = ""
wrk.headers["Authorization"] = "Bearer $SERVICE_JWT"
request = function()
  return wrk.format(nil, "/api/accounts/" .. ids[math.random(#ids)] .. "/token")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d errors_status=%d errors_socket=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
LUA

app_token_requests() {
    curl -fsS --max-time 10 "$MC/metrics" | awk '
        /^mailconnect_provider_request_duration_seconds_count\{/ && /operation="app_token"/ { n += $NF }
        END { printf "%d\n", n }'
}
BEFORE="$(app_token_requests)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CPU_BEFORE="$(cpu_ticks "$MC_PID")"
log "wrk -t1 -c$CONNECTIONS -d$DURATION over $MAILBOXES app mailboxes (tokens live $LIFETIME s, lead $LEAD s)"
timeout $(( ${DURATION%s} + 60 )) wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --timeout 5s --latency -s "$TMP/load.lua" "$MC" >"$TMP/wrk.out"
CPU_AFTER="$(cpu_ticks "$MC_PID")"
AFTER="$(app_token_requests)"
kill -0 "$MC_PID" 2>/dev/null || die "mailconnect died during the run"

export TMP BEFORE AFTER MAILBOXES DURATION LIFETIME LEAD CONNECTIONS CPU_BEFORE CPU_AFTER
export COMMIT="$(git rev-parse --short HEAD)$([[ -n "$(git status --porcelain --untracked-files=no)" ]] && echo ' (with uncommitted changes)')"
export DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
status=0
python3 - >"$TMP/report.md" <<'PY' || status=$?
import os, re, sys
E = os.environ
text = open(f"{E['TMP']}/wrk.out").read()
m = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", text.split("BENCH", 1)[1])}
secs = m["duration_us"] / 1e6
requests = int(E["AFTER"]) - int(E["BEFORE"])
lifetime, lead = int(E["LIFETIME"]), int(E["LEAD"])
# Renewals come due lead (plus up to lead/4 of jitter) before expiry.
shortest = (lifetime - 1) - lead - lead // 4
longest = (lifetime - 1) - lead
most = int(secs // shortest) + 2
least = max(0, int(secs // longest) - 1)
cpu = (int(E["CPU_AFTER"]) - int(E["CPU_BEFORE"])) / os.sysconf("SC_CLK_TCK")
bad = []
if m["errors_status"] or m["errors_socket"]:
    bad.append(f"{int(m['errors_status'])} non-2xx, {int(m['errors_socket'])} socket errors")
if not least <= requests <= most:
    bad.append(f"{requests} app token requests, expected {least} to {most}")
print(f"Generated by `bench/app_tokens.sh` ({E['DATE']}, commit `{E['COMMIT']}`).")
print()
print(f"- {E['MAILBOXES']} `app` mailboxes of one directory; app tokens live {lifetime} s "
      f"(Microsoft's: 3599 s), renewed {lead} s ahead (+ up to {lead // 4} s jitter): a renewal "
      f"every {shortest} to {longest} s.")
print(f"- Load: wrk -t1 -c{E['CONNECTIONS']} for {secs:.0f} s on the token route, a random mailbox per request.")
print()
print("| token route requests | requests/s | p50 | p99 | max | non-2xx | app token requests at the provider | expected (renewals in the run) | serve CPU | integrity |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
print(f"| {int(m['requests']):,} | {m['requests'] / secs:,.0f} | {m['p50_us'] / 1000:.2f} ms | {m['p99_us'] / 1000:.2f} ms "
      f"| {m['max_us'] / 1000:.1f} ms | {int(m['errors_status'])} | {requests} | {least}–{most} | {cpu / secs:.2f} cores "
      f"| {'ok' if not bad else 'FAILED: ' + '; '.join(bad)} |")
if bad:
    sys.exit(1)
PY
cat "$TMP/report.md"
(( status == 0 )) || die "integrity: the run FAILED (see the table); nothing written"
REPORT="${APP_BENCH_OUT:-$ROOT/docs/benchmarks.md}"
BEGIN='<!-- app-token-results: written by bench/app_tokens.sh -->'
END='<!-- /app-token-results -->'
write_section "$REPORT" "$TMP/report.md" "$BEGIN" "$END"
