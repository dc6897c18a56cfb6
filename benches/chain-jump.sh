#!/usr/bin/env bash
# Measures jumps of several releases through `ferry-server serve --diffs-on-demand`:
# publishes releases FROM .. FROM+N of a chain (../shared/bench/fetch-data.sh --chain)
# with publish's defaults (--diff-depth 3) and --retain N+2, while agents install the
# release each jump starts from; then each agent updates to the last release, and the
# update's requests and body bytes are counted in the server's access log. A jump of
# more than 3 takes a diff the server makes on request; 3 or fewer a listed diff. Next
# to each: bsdiff of the pair (single-file releases) and the archive ranges the same
# agent would fetch without a diff; then `zstd -19 --long=31` of the last release.
#
# Usage: benches/chain-jump.sh PRODUCT FROM N [JUMPS] [DATA_DIR]
#   e.g. benches/chain-jump.sh esbuild-chain 0.21.1 10 "1 3 5 10"
# Uses the debug binaries (the format crate and the dependencies are optimised in dev).
set -euo pipefail
cd "$(dirname "$0")/.."
PRODUCT=$1; FROM=$2; N=$3; JUMPS=${4:-$N}; DATA=${5:-/tmp/ferry-bench-data}
REL="$DATA/releases/$PRODUCT"
[ -d "$REL/$FROM" ] || { echo "missing $REL/$FROM" >&2; exit 1; }
BIN="$PWD/target/debug"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

mapfile -t ALL < <(ls "$REL" | sort -V)
start=-1
for i in "${!ALL[@]}"; do [ "${ALL[$i]}" = "$FROM" ] && start=$i; done
TO=${ALL[$((start + N))]:?not $N releases after $FROM}
src() { local d="$REL/$1"; if [ "$(find "$d" -mindepth 1 -maxdepth 1 | wc -l)" = 1 ] && [ -f "$(find "$d" -mindepth 1 -maxdepth 1)" ]; then find "$d" -mindepth 1 -maxdepth 1; else echo "$d"; fi; }

"$BIN/ferry-server" keygen --out "$WORK/keys" >/dev/null
publish() {
  "$BIN/ferry-server" publish --repo "$WORK/repo" --key "$WORK/keys/ferry.key" \
    --channel stable --version "$1" --retain $((N + 2)) "$(src "$1")" >/dev/null
}
publish "$FROM"
"$BIN/ferry-server" serve --repo "$WORK/repo" --listen 127.0.0.1:0 \
  --access-log "$WORK/access.log" --diffs-on-demand > "$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE_PID=$!
PIDS+=("$SERVE_PID")
for _ in $(seq 100); do grep -q listening "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^listening on //p' "$WORK/serve.out")

# Agent j installs the release j before the last when it is current.
install_agents_at() {
  for j in $JUMPS; do
    if [ $((start + N - j)) = "$1" ]; then
      "$BIN/ferry" init --root "$WORK/root-$j" --server "$URL" --channel stable \
        --public-key "$WORK/keys/ferry.pub" >/dev/null
      # The first diff of a pair may take longer than the default 30 s here.
      sed -i 's/^# diff_wait = .*/diff_wait = "50s"/' "$WORK/root-$j/.ferry/config.toml"
      "$BIN/ferry" update --root "$WORK/root-$j" >/dev/null
    fi
  done
}
install_agents_at "$start"
for k in $(seq $((start + 1)) $((start + N))); do
  publish "${ALL[$k]}"
  if [ "$k" -lt $((start + N)) ]; then install_agents_at "$k"; fi
done

for j in $JUMPS; do
  base=${ALL[$((start + N - j))]}
  archive=$("$BIN/ferry" update --root "$WORK/root-$j" --dry-run --json | python3 -c '
import json, sys
p = json.load(sys.stdin)
print(([p["download_bytes"]] + [f["download_bytes"] for f in p["fallbacks"] if f["via"] == "archive"])[-1])')
  before=$(wc -l < "$WORK/access.log")
  t0=$(date +%s.%N)
  out=$("$BIN/ferry" update --root "$WORK/root-$j" --json)
  t1=$(date +%s.%N)
  echo "N-$j: $base -> $TO: $out ($(echo "$t1 - $t0" | bc) s)"
  tail -n +"$((before + 1))" "$WORK/access.log" | python3 -c '
import json, sys
n = b = 0
for line in sys.stdin:
    r = json.loads(line); n += 1; b += r["bytes"]
    print("   ", r["status"], r["path"][:60], r["bytes"], r.get("range") or "")
print("    requests: %d, body bytes: %d" % (n, b))'
  echo "    archive ranges instead: $archive"
  diff -r "$WORK/root-$j/current" "$REL/$TO" >/dev/null && echo "    installed tree identical to $TO"
  if [ -f "$(src "$base")" ]; then
    bsdiff "$(src "$base")" "$(src "$TO")" "$WORK/bsdiff.patch"
    echo "    bsdiff $base -> $TO: $(stat -c %s "$WORK/bsdiff.patch") bytes"
  fi
done
echo "ferry-server serve peak RSS (its jobs included): $(sed -n 's/^VmHWM:\s*//p' "/proc/$SERVE_PID/status")"
if [ -f "$(src "$TO")" ]; then
  echo "zstd -19 --long=31 of $TO: $(zstd -19 --long=31 -c -q "$(src "$TO")" | wc -c) bytes"
fi
