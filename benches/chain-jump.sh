#!/usr/bin/env bash
# Measures a jump of N releases through `ferry-server serve --diffs-on-demand`: publish
# release FROM of a chain (../shared/bench/fetch-data.sh --chain), install it, publish
# the N releases after it with publish's defaults (--diff-depth 3) and --retain N+1, then
# update and count the update's requests and body bytes in the server's access log.
# Prints bsdiff of the pair's single file (when the release is one file) and
# `zstd -19 --long=31` of the new release next to it, and the same update through a
# server without --diffs-on-demand (the archive ranges).
#
# Usage: benches/chain-jump.sh PRODUCT FROM N [DATA_DIR]
#   e.g. benches/chain-jump.sh esbuild-chain 0.21.1 10
# Uses the debug binaries (the format crate and dependencies are optimised in dev).
set -euo pipefail
cd "$(dirname "$0")/.."
PRODUCT=$1; FROM=$2; N=$3; DATA=${4:-/tmp/ferry-bench-data}
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
serve() { # serve NAME ARGS...: starts a server, sets URL_<NAME>
  local name=$1; shift
  "$BIN/ferry-server" serve --repo "$WORK/repo" --listen 127.0.0.1:0 \
    --access-log "$WORK/$name.log" "$@" > "$WORK/$name.out" 2>"$WORK/$name.err" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q listening "$WORK/$name.out" 2>/dev/null && break; sleep 0.1; done
  printf -v "URL_$name" '%s' "$(sed -n 's/^listening on //p' "$WORK/$name.out")"
}
publish "$FROM"
serve od --diffs-on-demand
serve plain
for r in od plain; do
  url=URL_$r
  "$BIN/ferry" init --root "$WORK/root-$r" --server "${!url}" --channel stable \
    --public-key "$WORK/keys/ferry.pub" >/dev/null
  # The first diff may take longer than the default 30 s wait on a slow machine.
  sed -i 's/^# diff_wait = .*/diff_wait = "50s"/' "$WORK/root-$r/.ferry/config.toml"
  "$BIN/ferry" update --root "$WORK/root-$r" >/dev/null
done
for k in $(seq $((start + 1)) $((start + N))); do publish "${ALL[$k]}"; done

for r in od plain; do
  before=$(wc -l < "$WORK/$r.log")
  t0=$(date +%s.%N)
  out=$("$BIN/ferry" update --root "$WORK/root-$r" --json)
  t1=$(date +%s.%N)
  echo "$r: $FROM -> $TO: $out ($(echo "$t1 - $t0" | bc) s)"
  tail -n +"$((before + 1))" "$WORK/$r.log" | python3 -c '
import json, sys
n = b = 0
for line in sys.stdin:
    r = json.loads(line); n += 1; b += r["bytes"]
    print("   ", r["status"], r["path"][:90], r["bytes"], r.get("range") or "")
print("    requests: %d, body bytes: %d" % (n, b))'
  diff -r "$WORK/root-$r/current" "$REL/$TO" >/dev/null && echo "    installed tree identical to $TO"
done

if [ -f "$(src "$FROM")" ]; then
  old=$(src "$FROM"); new=$(src "$TO")
  bsdiff "$old" "$new" "$WORK/bsdiff.patch"
  echo "bsdiff $FROM -> $TO: $(stat -c %s "$WORK/bsdiff.patch") bytes"
  echo "zstd -19 --long=31 of $TO: $(zstd -19 --long=31 -c -q "$new" | wc -c) bytes"
fi
