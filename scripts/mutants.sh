#!/usr/bin/env bash
# Mutation testing of the security-critical modules with cargo-mutants
# (`cargo install cargo-mutants`), file by file, each against only the test
# targets that exercise it. Not part of CI: on two cores the whole list
# takes hours. Results and figures: docs/testing.md.
#
#   scripts/mutants.sh                 every file of the list below
#   scripts/mutants.sh src/crypto.rs   only the files named (from the list)
#   MUTANTS_REV=2629510 scripts/mutants.sh …   a commit instead of the tree
#
# The tree (tracked and untracked files, as they are now; or the commit
# MUTANTS_REV) is copied to target/mutants-tree and mutated there in place,
# with its own target directory, so edits made here meanwhile are never
# mutated and successive runs build incrementally. Each file's outcome
# lands in $MUTANTS_OUT/<file>/mutants.out (missed.txt, caught.txt,
# outcomes.json), and a summary line per file in $MUTANTS_OUT/summary.txt.
#
# Settings: MUTANTS_TIMEOUT (seconds per test run, default 240),
# MUTANTS_ARGS (more cargo-mutants options, e.g. "--re validate"),
# MUTANTS_OUT (default mutants.out).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# file → the cargo test arguments that exercise it.
declare -A targets=(
    [src/oauth/id_token.rs]="--lib --test api"
    [src/oauth/microsoft.rs]="--lib --test api"
    [src/oauth/google.rs]="--lib --test api"
    [src/oauth/oidc.rs]="--lib --test api"
    [src/oauth/state.rs]="--lib --test api"
    [src/oauth/pkce.rs]="--lib --test api"
    [src/http/auth.rs]="--lib --test api --test ops"
    [src/crypto.rs]="--lib --test api --test ops"
    [src/core/flow.rs]="--lib --test api"
    [src/core/callback.rs]="--lib --test api"
    [src/core/refresh/on_demand.rs]="--lib --test api"
    [src/core/refresh/mod.rs]="--lib --test api"
    [src/core/refresh/sweep.rs]="--lib --test api --test replicas"
    [src/webhooks/mod.rs]="--lib --test api --test webhook_replicas"
    [src/webhooks/deliver.rs]="--lib --test api --test webhook_replicas"
)
# Test names (substrings, any of them) each file's mutants are tested with,
# to keep a run within hours: the tests of the module itself and the
# integration tests that go through it. Narrower than the whole targets, so
# a mutant can only be missed more often, never less; MUTANTS_ALL_TESTS=1
# runs every test of the targets instead.
declare -A filters=(
    [src/oauth/id_token.rs]="id_token"
    [src/oauth/state.rs]="state callback"
    [src/oauth/pkce.rs]="pkce callback connect::"
    [src/http/auth.rs]="auth"
    [src/crypto.rs]="crypto storage rotat cli"
    [src/oauth/microsoft.rs]="id_token tenant microsoft"
    [src/oauth/google.rs]="google id_token"
    [src/oauth/oidc.rs]="oidc id_token"
    [src/core/flow.rs]="callback connect:: hardening id_token shared"
    [src/core/callback.rs]="callback connect:: hardening outages admin_consent"
    [src/core/refresh/on_demand.rs]="token refresh shared"
    [src/core/refresh/mod.rs]="refresh"
    [src/core/refresh/sweep.rs]="refresher"
    [src/webhooks/mod.rs]="webhook"
    [src/webhooks/deliver.rs]="webhook"
)
# Only part of a file, where the rest is not security-critical: of the
# providers, their issuer and claim checks; of the flow, the callback and
# what it stores; of the token route, its refresh gate; of the webhooks,
# signing and what is written; of the deliverer, the request that carries
# the signature.
declare -A only=(
    [src/oauth/microsoft.rs]="--re validate_id_token|admits"
    [src/oauth/google.rs]="--re Google>::connect"
    [src/oauth/oidc.rs]="--re discovery|Oidc>::connect"
    [src/core/flow.rs]="--re finish_connect|open_sealed_pkce|store_connection"
    [src/core/refresh/on_demand.rs]="--re is_fresh|still_valid|ensure_usable|fresh_token|refresh_locked|refresh_with_lease|serve_while_valid"
    [src/core/refresh/mod.rs]="--re lease_outlasts|next_due|backoff|refresh_leased"
    [src/webhooks/mod.rs]="--re sign|enqueue"
    [src/webhooks/deliver.rs]="--re Deliverer::attempt"
)
order=(
    src/oauth/id_token.rs src/oauth/microsoft.rs src/oauth/google.rs
    src/oauth/oidc.rs src/oauth/state.rs src/http/auth.rs src/crypto.rs
    src/oauth/pkce.rs src/core/callback.rs src/core/flow.rs src/core/refresh/on_demand.rs src/core/refresh/mod.rs
    src/core/refresh/sweep.rs src/webhooks/mod.rs src/webhooks/deliver.rs
)

files=("$@")
[ ${#files[@]} -gt 0 ] || files=("${order[@]}")
for f in "${files[@]}"; do
    [ -n "${targets[$f]:-}" ] || { echo "not in the list: $f (known: ${order[*]})" >&2; exit 2; }
done

command -v cargo-mutants >/dev/null || { echo "cargo-mutants is missing: cargo install cargo-mutants" >&2; exit 2; }

tree=$root/target/mutants-tree
out_root=$root/${MUTANTS_OUT:-mutants.out}
mkdir -p "$tree" "$out_root"
# A fresh copy of the sources (the build cache under $tree/target stays).
find "$tree" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
if [ -n "${MUTANTS_REV:-}" ]; then
    commit=$(git rev-parse --short "$MUTANTS_REV")
    git archive "$commit" | tar -xf - -C "$tree"
else
    commit=$(git rev-parse --short HEAD)
    git diff --quiet HEAD 2>/dev/null || commit="$commit+changes"
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' p; do [ -e "$p" ] && printf '%s\0' "$p"; done \
        | tar --null -T - -cf - | tar -xf - -C "$tree"
fi

for f in "${files[@]}"; do
    out=$out_root/$(echo "${f#src/}" | tr / _ | sed 's/\.rs$//')
    rm -rf "$out"
    mkdir -p "$out"
    filter=${filters[$f]:-}
    [ -z "${MUTANTS_ALL_TESTS:-}" ] || filter=
    echo "== $f (cargo test ${targets[$f]}${filter:+ -- $filter}) at $commit"
    # shellcheck disable=SC2086 # the targets are several words on purpose
    (cd "$tree" && CARGO_TARGET_DIR="$tree/target" nice -n 19 cargo mutants --in-place \
        --file "$f" --output "$out" --timeout "${MUTANTS_TIMEOUT:-240}" \
        --colors never ${only[$f]:-} ${MUTANTS_ARGS:-} -- ${targets[$f]} \
        ${filter:+-- $filter}) || true
    o=$out/mutants.out
    count() { local n; n=$(grep -c . "$o/$1.txt" 2>/dev/null) || true; echo "${n:-0}"; }
    line="$(date -u +%F) $commit $f: caught $(count caught) missed $(count missed) timeout $(count timeout) unviable $(count unviable)"
    echo "$line" | tee -a "$out_root/summary.txt"
    [ "$(count missed)" = 0 ] || sed 's/^/    missed: /' "$o/missed.txt"
done
