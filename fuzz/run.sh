#!/usr/bin/env bash
# Builds every fuzz target once, then runs each for SECONDS_PER_TARGET (default 60) on a
# copy of its committed seed corpus (so runs never grow fuzz/corpus/). Prints one line
# per target and exits non-zero if any target crashed, naming the crashing input.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]
#
# Works on the stable toolchain through RUSTC_BOOTSTRAP=1 (cargo fuzz needs -Z flags).
# Crashes are kept in fuzz/artifacts/<target>/, full logs in fuzz/target/fuzz-logs/.
# Reproduce one with: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <artifact>
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_PER_TARGET="${1:-60}"
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "--- installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi

echo "--- fuzz build (all targets)"
start=$(date +%s)
cargo fuzz build
echo "fuzz build: $(( $(date +%s) - start )) s"

logs=target/fuzz-logs
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$logs"
failed=0
for t in $(cargo fuzz list); do
  mkdir -p "$work/$t" "artifacts/$t"
  if [ -d "corpus/$t" ]; then cp -R "corpus/$t/." "$work/$t/"; fi
  log="$logs/$t.log"
  set +e
  cargo fuzz run "$t" "$work/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
  runs=$(sed -E 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\1/' <<<"$done_line")
  secs=$(sed -E 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\2/' <<<"$done_line")
  if [ "$rc" -eq 0 ] && [ -n "$done_line" ]; then
    echo "fuzz $t: $runs executions in $secs s, 0 crashes"
    continue
  fi
  failed=1
  # libFuzzer stops at the first crash: "stat::number_of_executed_units" still counts.
  runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log" | tail -n 1)
  artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n 1)
  echo "fuzz $t: 1 crash after ${runs:-?} executions (exit $rc); artifact: ${artifact:-none, see $log}"
  grep -A2 -E "panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)" "$log" \
    | head -n 8 | sed 's/^/    /' || true
  echo "    log: fuzz/$log; reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $t ${artifact:-<artifact>}"
  echo "    once fixed, keep it: copy the artifact to fuzz/regressions/$t/ (see fuzz/regressions/README.md)"
done
exit "$failed"
