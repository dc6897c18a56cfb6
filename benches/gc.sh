#!/usr/bin/env bash
# What `ferry-server gc` frees and how long it takes on a repository that has published
# a chain of real releases with a short retention: the 15 consecutive esbuild releases
# of ../shared/bench/fetch-data.sh --chain, published with --retain 3 and zstd level 3
# (default diffs) into a folder and into a bucket (SeaweedFS on loopback), then, 2 s
# later, `gc --grace 1s` (everything unreferenced counts as old: nothing publishes
# meanwhile), timed as a whole command.
#
#   benches/gc.sh [DATA_DIR]     (default /tmp/ferry-bench-data)
#
# Uses target/debug binaries (dependencies optimised) unless FERRY_BIN_DIR says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-/tmp/ferry-bench-data}
chain="$data/releases/esbuild-chain"
[ -d "$chain" ] || { echo "gc.sh: $chain missing: run ../shared/bench/fetch-data.sh --chain $data" >&2; exit 2; }
bin=${FERRY_BIN_DIR:-target/debug}
work=$(mktemp -d)
SEAWEEDFS_PID=""
cleanup() { [ -n "$SEAWEEDFS_PID" ] && kill "$SEAWEEDFS_PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
. benches/seaweedfs.sh

"$bin/ferry-server" keygen --out "$work/keys" >/dev/null
versions=$(ls "$chain" | sort -V)

seaweedfs_start "$work/weed"

echo "| repository | releases published | retained | gc wall time | objects freed | bytes freed | objects kept |"
echo "|---|---|---|---|---|---|---|"
for repo in "$work/repo" s3://ferry/gc; do
  n=0
  for v in $versions; do
    "$bin/ferry-server" publish --repo "$repo" --key "$work/keys/ferry.key" --channel stable \
      --version "$v" --retain 3 --zstd-level 3 "$chain/$v" >/dev/null
    n=$((n + 1))
  done
  start=$(date +%s.%N)
  sleep 2
  out=$("$bin/ferry-server" gc --repo "$repo" --grace 1s)
  end=$(date +%s.%N)
  summary=$(printf '%s\n' "$out" | tail -1)
  python3 - "$repo" "$n" "$start" "$end" "$summary" <<'EOF'
import re, sys
repo, n, start, end, summary = sys.argv[1:]
m = re.search(r"freed (\d+) objects, (\d+) bytes; kept (\d+) referenced", summary)
freed, size, kept = m.groups()
shown = "folder" if not repo.startswith("s3://") else "s3:// (SeaweedFS)"
print(f"| {shown} | {n} | 3 | {float(end)-float(start):.2f} s | {freed} | {int(size)/1e6:.1f} MB | {kept} |")
EOF
done
