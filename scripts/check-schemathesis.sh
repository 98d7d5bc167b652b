#!/usr/bin/env bash
# API fuzzing: schemathesis (PyPI) against a running `mailconnect serve`,
# driven by the service's own /api/openapi.json. Every check is on: no 5xx,
# every status code, content type, header and body as documented,
# schema-violating requests refused, schema-valid ones accepted, auth
# enforced (schemathesis also sends requests without credentials), plus its
# stateful phase, which follows the links it infers between operations.
#
# The service runs on loopback with a fresh SQLite file, Microsoft pointed
# at the `mailconnect-sandbox` fake and Google at a closed loopback port
# (authorize works; anything that would call Google fails as
# provider_unavailable), so nothing leaves the machine.
#
# Four passes, a few minutes in all:
#   1. no account yet, every operation, each with its own role (admin for
#      the admin routes, service for the token route);
#   2. one Microsoft mailbox connected through the real authorize →
#      sandbox → callback flow, its id offered for every account id half
#      the time; every operation but disconnect (pass 4) and verify, which
#      would log in to outlook.office365.com (the sandbox's mail hosts are
#      Microsoft's own: that traffic must never leave the machine);
#   3. the roles swapped: admin on the token route, service everywhere else;
#   4. as 2 with disconnect, which runs first (operations run in the
#      document's order): the rest then meets a disconnected mailbox.
# Afterwards serve must still be up, must have logged no error, and must
# never have logged in to a mail server.
#
# Knobs (environment):
#   SCHEMATHESIS_EXAMPLES  examples per operation and phase (default 60)
#   SCHEMATHESIS_SEED      seed (default fixed, so CI is repeatable); "random"
#                          for a new one each run (printed, for replaying)
#   MAILCONNECT_SCHEMATHESIS_VENV  where schemathesis is installed
#                          (default ~/.cache/mailconnect/schemathesis-venv)
#   MAILCONNECT_BIN_DIR    take mailconnect and mailconnect-sandbox from here
#                          instead of building them into target/debug
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

VERSION=4.32.5
VENV="${MAILCONNECT_SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mailconnect/schemathesis-venv}"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-60}"
SEED="${SCHEMATHESIS_SEED:-20261127}"

log() { printf '[check-schemathesis %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qF "$VERSION"; then
    log "installing schemathesis==$VERSION into $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

if [[ -z "${MAILCONNECT_BIN_DIR:-}" ]]; then
    cargo build --quiet --bin mailconnect
    cargo build --quiet -p mailconnect-sandbox --bin mailconnect-sandbox
    BIN_DIR="$ROOT/target/debug"
else
    BIN_DIR="$MAILCONNECT_BIN_DIR"
fi

TMP="$(mktemp -d /tmp/mc-schemathesis.XXXXXX)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MC_PORT="$(free_port)"
SB_PORT="$(free_port)"
CLOSED_PORT="$(free_port)" # nothing listens here: Google "is down"
MC="http://127.0.0.1:$MC_PORT"
SB="http://127.0.0.1:$SB_PORT"
CALLBACK="$MC/api/oauth/microsoft/callback"

"$BIN_DIR/mailconnect-sandbox" --bind "127.0.0.1:$SB_PORT" --client-id schemathesis-client \
    --client-secret schemathesis-secret --redirect-uri "$CALLBACK" >"$TMP/sandbox.out" 2>"$TMP/sandbox.err" &
PIDS+=("$!")

export JWT_SECRET=schemathesis-jwt-secret-0123456789abcdef
G="http://127.0.0.1:$CLOSED_PORT"
env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
    MAILCONNECT_BIND="127.0.0.1:$MC_PORT" \
    DATABASE_URL="sqlite://$TMP/mailconnect.db" \
    JWT_SECRET="$JWT_SECRET" \
    OAUTH_STATE_SECRET=schemathesis-state-secret-0123456789abc \
    TOKEN_ENCRYPTION_KEYS='k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=' \
    MICROSOFT_OAUTH_CLIENT_ID=schemathesis-client \
    MICROSOFT_OAUTH_CLIENT_SECRET=schemathesis-secret \
    MICROSOFT_OAUTH_REDIRECT_URI="$CALLBACK" \
    MICROSOFT_OAUTH_AUTHORITY="$SB" \
    MICROSOFT_GRAPH_URL="$SB" \
    GOOGLE_OAUTH_CLIENT_ID=schemathesis.apps.googleusercontent.com \
    GOOGLE_OAUTH_CLIENT_SECRET=schemathesis-google-secret \
    GOOGLE_OAUTH_AUTH_URL="$G/auth" GOOGLE_OAUTH_TOKEN_URL="$G/token" \
    GOOGLE_OAUTH_USERINFO_URL="$G/userinfo" GOOGLE_OAUTH_REVOKE_URL="$G/revoke" \
    GOOGLE_OAUTH_JWKS_URL="$G/jwks" \
    RUST_LOG=warn,mailconnect::verify=info \
    "$BIN_DIR/mailconnect" serve >"$TMP/serve.out" 2>"$TMP/serve.err" &
MC_PID=$!
PIDS+=("$MC_PID")
for _ in $(seq 100); do
    curl -fsS "$MC/readyz" >/dev/null 2>&1 && curl -fsS "$SB/common/discovery/v2.0/keys" >/dev/null 2>&1 && break
    kill -0 "$MC_PID" 2>/dev/null || { cat "$TMP/serve.err" >&2; die "serve exited"; }
    sleep 0.1
done
curl -fsS "$MC/readyz" >/dev/null || die "serve did not become ready (see $TMP/serve.err)"

jwt() { "$BIN_DIR/mailconnect" jwt --tenant schemathesis-tenant --role "$1" --sub schemathesis --lifetime 1h; }
ADMIN_JWT="$(jwt admin)"
SERVICE_JWT="$(jwt service)"
export ADMIN_JWT SERVICE_JWT

# The config: a role per operation, the connected mailbox's id offered
# for every account id half the time (once there is one), and where a
# check's expectation must bend to what no schema can say (explained).
write_config() { # write_config FILE DEFAULT_ROLE TOKEN_ROUTE_ROLE [ACCOUNT_ID]
    local bind='{ dictionary = "accounts", probability = 0.5 }'
    {
        echo "# Written by scripts/check-schemathesis.sh"
        echo "headers = { Authorization = \"Bearer \${$2}\" }"
        # A body over the 16 KiB limit is refused with 413 before it is read.
        echo 'checks.negative_data_rejection.expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]'
        if [[ -n "${4:-}" ]]; then
            echo "parameters = { \"path.id\" = $bind, \"body.account_id\" = $bind, \"query.account_id\" = $bind }"
            echo "[dictionaries.accounts]"
            echo "values = [\"$4\"]"
        fi
        echo "[[operations]]"
        echo 'include-path-regex = "^/api/accounts/\\{id\\}/token$"'
        echo "headers = { Authorization = \"Bearer \${$3}\" }"
        # The callback's state is a signed token: a schema-valid value is
        # almost never a genuine state, and the contract answers 400 (an
        # HTML page, no redirect) to a state that does not verify.
        echo "[[operations]]"
        echo 'include-path-regex = "/callback$"'
        echo 'checks.positive_data_acceptance.expected-statuses = [303, 400, 404, 409]'
        # Adding a mailbox: a shared one needs via_account_id (a rule
        # between fields), and an address valid to JSON Schema's `email`
        # format may still not be a mailbox address (quoted local parts,
        # IP literals); both answer 400 invalid_request, as documented.
        echo "[[operations]]"
        echo 'include-path-regex = "^/api/accounts$"'
        echo 'checks.positive_data_acceptance.expected-statuses = [201, 400, 401, 403, 404, 409]'
        # Admin consent: `consumers` is a schema-valid directory that has
        # no admin (409 admin_consent_unavailable, as documented).
        echo "[[operations]]"
        echo 'include-path-regex = "^/api/oauth/microsoft/admin-consent$"'
        echo 'checks.positive_data_acceptance.expected-statuses = [200, 401, 403, 409]'
    } >"$1"
}

run() { # run NAME CONFIG [extra schemathesis args]
    local name="$1" config="$2"
    shift 2
    local seed=(--seed "$SEED")
    [[ "$SEED" == random ]] && seed=()
    log "pass $name"
    # From $TMP: schemathesis keeps a cache directory where it runs.
    if ! (cd "$TMP" && "$VENV/bin/schemathesis" --config-file "$config" --no-color run "$MC/api/openapi.json" \
        --checks all --max-examples "$EXAMPLES" "${seed[@]}" --request-timeout 15 \
        "$@" >"$TMP/$name.log" 2>&1); then
        cat "$TMP/$name.log"
        log "serve's log (warnings and errors):"
        tail -50 "$TMP/serve.err" >&2
        die "schemathesis found failures in pass $name"
    fi
    sed -n '/SUMMARY/,$p' "$TMP/$name.log"
}

# 1. An empty tenant.
write_config "$TMP/empty.toml" ADMIN_JWT SERVICE_JWT
run empty "$TMP/empty.toml"

# 2. One connected mailbox, through the real flow.
URL="$(curl -fsS -X POST -H "Authorization: Bearer $ADMIN_JWT" "$MC/api/oauth/microsoft/authorize" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["authorization_url"])')"
BACK="$(curl -fsS -o /dev/null -w '%{redirect_url}' "$URL")"
DONE="$(curl -fsS -o /dev/null -w '%{http_code} %{redirect_url}' "$BACK")"
[[ "$DONE" == "303 "*"oauth=connected"* ]] || die "could not connect the sandbox mailbox: $DONE"
ACCOUNT_ID="${DONE##*account_id=}"
log "connected sandbox mailbox $ACCOUNT_ID"
write_config "$TMP/connected.toml" ADMIN_JWT SERVICE_JWT "$ACCOUNT_ID"
run connected "$TMP/connected.toml" --exclude-path-regex '/(verify|disconnect)$'

# 3. Every route with the other role.
write_config "$TMP/swapped.toml" SERVICE_JWT ADMIN_JWT "$ACCOUNT_ID"
run swapped "$TMP/swapped.toml" --exclude-path-regex '/verify$' --max-examples "$((EXAMPLES / 3 + 1))"

# 4. Disconnect first, then the rest against a disconnected mailbox.
run disconnected "$TMP/connected.toml" --exclude-path-regex '/verify$'

kill -0 "$MC_PID" 2>/dev/null || die "serve died during the run"
# The safety net for passes 2-4: no login was ever attempted (there was no
# account to log in to in pass 1, and verify was left out afterwards).
if grep -F 'mail login verified' "$TMP/serve.err" >&2; then
    die "verify logged in to a mail server (above): that must never leave the machine"
fi
if grep -E '(^|[^A-Za-z_])ERROR([^A-Za-z_]|$)|panicked' "$TMP/serve.err" >&2; then
    die "serve logged errors (above)"
fi
log "no failures: every response a documented status and shape, no 5xx, no error logged"
