#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers with AFL++ through afl.rs, on
# stable Rust: each target in fuzz/src/bin runs for a given time, starting
# from its seed corpus in fuzz/corpus/TARGET, and the executions, paths and
# crashes are reported. See docs/testing.md, "Fuzzing".
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   scripts/fuzz.sh 900 verify sasl # these targets, 15 minutes each
#
# Installs what is missing: cargo-afl (crates.io, pinned) and the AFL++ it
# builds. Runs under `nice -n 19`. Findings stay in fuzz/out/TARGET
# (git-ignored); a crash reproduces with
#   fuzz/target/release/TARGET < fuzz/out/TARGET/default/crashes/id:…
# Exit status 1 when a target found a crash or a hang.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH="${1:-60}"
shift || true
ALL=(state caller_jwt callback verify sasl config)
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("${ALL[@]}")
AFL_VERSION=0.18.2

log() { printf '[fuzz %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if ! cargo afl --version 2>/dev/null | grep -qF "$AFL_VERSION"; then
    log "installing cargo-afl $AFL_VERSION"
    nice -n 19 cargo install --locked cargo-afl --version "$AFL_VERSION"
fi
# AFL++ itself, built once per Rust toolchain (an error when already built).
nice -n 19 cargo afl config --build >/dev/null 2>&1 || true

log "building the targets (cargo afl build --release, in fuzz/)"
(cd fuzz && nice -n 19 cargo afl build --release --quiet)

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
mkdir -p fuzz/out
failed=0
printf '%-12s %10s %12s %8s %8s %8s %8s\n' target seconds executions exec/s corpus crashes hangs
for t in "${TARGETS[@]}"; do
    out="fuzz/out/$t"
    rm -rf "$out"
    log "$t: ${SECONDS_EACH}s"
    nice -n 19 cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" -V "$SECONDS_EACH" \
        "fuzz/target/release/$t" >"fuzz/out/$t.log" 2>&1 || {
        tail -20 "fuzz/out/$t.log" >&2
        log "$t: afl-fuzz failed"
        failed=1
        continue
    }
    stats="$out/default/fuzzer_stats"
    get() { awk -F' *: *' -v k="$1" '$1 == k {print $2}' "$stats"; }
    printf '%-12s %10s %12s %8s %8s %8s %8s\n' "$t" "$(get run_time)" "$(get execs_done)" \
        "$(get execs_per_sec)" "$(get corpus_count)" "$(get saved_crashes)" "$(get saved_hangs)"
    if [[ "$(get saved_crashes)" != 0 || "$(get saved_hangs)" != 0 ]]; then
        log "$t: findings in $out/default/crashes and hangs"
        failed=1
    fi
done
exit "$failed"
