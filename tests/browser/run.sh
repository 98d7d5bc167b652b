#!/usr/bin/env bash
# Browser tests of the admin page at `/`, against `mailconnect demo` (the
# service and the sandbox identity provider with its consent page, in one
# process): installs what is missing (Debian's chromium, the npm lockfile's
# packages), builds `mailconnect`, then runs `node --test`. Idempotent;
# prints one line when everything passes and the full report when something
# fails.
#
#   tests/browser/run.sh
#
# CHROMIUM overrides the browser (default /usr/bin/chromium). Screenshots and
# the demo's log go to target/browser-tests/; UPDATE_SCREENSHOT=1 writes the
# README's docs/admin-connected.png instead.
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$(cd ../.. && pwd)"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x "$CHROMIUM" ]; then
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null; then
  echo "tests/browser: node 20 or newer is required" >&2
  exit 1
fi

# npm ci only when node_modules does not match the lockfile.
stamp=node_modules/.mailconnect-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  echo "$want" >"$stamp"
fi

(cd "$ROOT" && cargo build --quiet -p mailconnect --bin mailconnect)

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if node --test --test-reporter=spec >"$log" 2>&1; then
  echo "browser tests: $(grep -Eo 'pass [0-9]+' "$log" | tail -1 | cut -d' ' -f2) passed"
else
  cat "$log"
  echo "browser tests FAILED (service logs: target/browser-tests/)" >&2
  exit 1
fi
