#!/usr/bin/env bash
# Validates the OpenAPI document of the HTTP API with an independent
# validator. Starts nothing: `mailconnect openapi` prints the document the
# server serves at /api/openapi.json (both come from the same code), which
# is written to target/openapi.json and checked with openapi-spec-validator
# (PyPI; it detects the version, here OpenAPI 3.1, and checks the document
# against that version's schema plus its semantic rules, e.g. every path
# parameter declared, unique operation ids, resolvable $refs).
# Tools are installed on first use into a virtualenv (pip, quietly):
#   $MAILCONNECT_OPENAPI_VENV, default ~/.cache/mailconnect/openapi-check-venv
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${MAILCONNECT_OPENAPI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mailconnect/openapi-check-venv}"
PKGS=(openapi-spec-validator==0.9.0)

if [ ! -x "$VENV/bin/openapi-spec-validator" ]; then
    echo "check-openapi: installing ${PKGS[*]} into $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PKGS[@]}"
fi

mkdir -p target
cargo run --quiet -- openapi > target/openapi.json
"$VENV/bin/openapi-spec-validator" target/openapi.json
