#!/usr/bin/env bash
# Stops the peers started by start.sh: tests/peers/stop.sh [<dir> | <dir>/env]
# (default: the directory of $MAILCONNECT_PEERS). Removes the directory.
set -euo pipefail
target=${1:-${MAILCONNECT_PEERS:-}}
[ -n "$target" ] || { echo "usage: $0 <peers dir>" >&2; exit 2; }
[ -d "$target" ] || target=$(dirname "$target")
case "$target" in /tmp/mailconnect-peers.*) ;; *) echo "refusing to stop $target" >&2; exit 2 ;; esac
[ -f "$target/dovecot.conf" ] && dovecot -c "$target/dovecot.conf" stop 2>/dev/null || true
for f in idp sink; do
  if [ -f "$target/$f.pid" ]; then kill "$(cat "$target/$f.pid")" 2>/dev/null || true; fi
done
sleep 0.5
rm -rf "$target"
