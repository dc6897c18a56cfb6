#!/usr/bin/env bash
# The benchmark suite (issues 12 and 14): every target is a ratio measured in the same run.
#
#   benches/run.sh [--quick] [--only SECTION[,SECTION]] [--skip-install] [--data DIR]
#
#   --quick         small sizes and the esbuild pair only (a smoke run of ~3-5 minutes)
#   --only S        run some sections: sizes, real, bytes, tree1g, trees, server (the
#                   default: issue 12's suite) and diffs (issue 14's wide jumps: 15
#                   chained publishes with six diffs each, about 17 minutes on its own;
#                   `--only diffs` runs it, `--only all` runs everything)
#   --skip-install  do not apt-get missing tools (sections needing them note the gap)
#   --data DIR      real releases (default /tmp/ferry-bench-data; fetched with
#                   bash ../shared/bench/fetch-data.sh --chain DIR when missing)
#
# Builds ferry in the release profile into target/bench-release, installs nginx, zstd,
# bsdiff, wrk, nghttp2-client (h2load), gnuplot and time with apt-get when missing, runs
# benches/suite/*.sh (one measurement each) and writes benches/results/latest.md,
# latest.json (with the machine's description), curves.png and records.jsonl (the raw
# rows: benches/suite/report.py --records ... rebuilds the others from it). The criterion
# micro-benchmarks are separate: cargo bench -p ferry-benches.
set -euo pipefail
BENCHES="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCHES/.." && pwd)"
cd "$ROOT"
QUICK=0; ONLY=""; INSTALL=1; DATA=/tmp/ferry-bench-data
ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --only) ONLY=$2; shift 2 ;;
    --skip-install) INSTALL=0; shift ;;
    --data) DATA=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
SECTIONS="sizes real bytes tree1g trees server"
[ -n "$ONLY" ] && SECTIONS=${ONLY//,/ }
[ "$SECTIONS" = all ] && SECTIONS="sizes real bytes diffs tree1g trees server"
START=$(date +%s)

# ---- tools ----
need=()
for t in nginx:nginx zstd:zstd bspatch:bsdiff wrk:wrk h2load:nghttp2-client gnuplot:gnuplot-nox curl:curl; do
  command -v "${t%%:*}" >/dev/null || [ -x "/usr/sbin/${t%%:*}" ] || need+=("${t#*:}")
done
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$INSTALL" = 1 ] && command -v apt-get >/dev/null; then
    echo "== apt-get install ${need[*]}" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null \
      || echo "run.sh: apt-get could not install all of ${need[*]}; sections needing them say so" >&2
  else
    echo "run.sh: missing ${need[*]} (not installed: --skip-install or no apt-get)" >&2
  fi
fi
# libclang (bindgen, for the bundled bzip3 the format crate builds)
if [ "$INSTALL" = 1 ]; then
  bash "$ROOT/.ci/build-deps.sh" || echo "run.sh: .ci/build-deps.sh failed; the build below may too" >&2
fi
if [ ! -f "$DATA/MANIFEST.txt" ] && [[ " $SECTIONS " =~ \ (real|bytes|diffs)\  ]]; then
  echo "== fetching the real releases into $DATA" >&2
  bash "$ROOT/../shared/bench/fetch-data.sh" --chain "$DATA"
fi

# ---- build (release profile, its own target dir) ----
echo "== cargo build --release (target/bench-release)" >&2
export CARGO_TARGET_DIR="$ROOT/target/bench-release"
cargo build --release --quiet -p ferry-server -p ferry-client -p ferry-benches --bins
WORKROOT=$(mktemp -d /tmp/ferry-suite.XXXXXX); chmod 755 "$WORKROOT"
BIN="$WORKROOT/bin"; mkdir -p "$BIN"
cp "$CARGO_TARGET_DIR"/release/{ferry,ferry-server,suite-tool,diff-eval} "$BIN/"
OUT="$WORKROOT/out"; mkdir -p "$OUT"; : > "$OUT/records.jsonl"
cleanup() { rm -rf "$WORKROOT"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export BIN OUT QUICK DATA SUITE="$BENCHES/suite" CACHE="$BENCHES/.cache"
mkdir -p "$CACHE"

# ---- sections ----
for s in $SECTIONS; do
  [ -x "$BENCHES/suite/$s.sh" ] || { echo "run.sh: no section $s" >&2; exit 2; }
  echo "== $s" >&2
  t0=$(date +%s)
  export WORK="$WORKROOT/$s"; mkdir -p "$WORK"
  "$BENCHES/suite/$s.sh" || python3 "$BENCHES/suite/rec.py" "$OUT/records.jsonl" kind=note section="$s" \
    text="section $s failed (exit status $?); its rows may be missing"
  python3 "$BENCHES/suite/rec.py" "$OUT/records.jsonl" kind=section section="$s" seconds="$(( $(date +%s) - t0 ))"
  rm -rf "$WORK"
done

# ---- report ----
mkdir -p "$BENCHES/results"
# Sections this run left out keep their rows from the previous results, said in a note,
# so that issue 12's suite and issue 14's diffs section can run apart.
if [ -f "$BENCHES/results/records.jsonl" ] && [ "$QUICK" = 0 ]; then
  python3 - "$BENCHES/results/records.jsonl" "$OUT/records.jsonl" $SECTIONS <<'PY'
import json, sys
old, new, ran = sys.argv[1], sys.argv[2], set(sys.argv[3:])
kept = [json.loads(l) for l in open(old) if l.strip()]
before = [r["text"] for r in kept if r.get("section") == "all" and r.get("kind") == "note"]
kept = [r for r in kept if r.get("section") not in ran | {"all"}]
secs = sorted({r["section"] for r in kept if r.get("section")})
with open(new, "a") as out:
    for r in kept:
        out.write(json.dumps(r) + "\n")
    if secs:
        out.write(json.dumps({"kind": "note", "section": "all", "text":
            "rows of " + ", ".join(secs) + " are from the previous results, not this run"
            + "".join(" (which said: " + t + ")" for t in before)}) + "\n")
PY
fi
cp "$OUT/records.jsonl" "$BENCHES/results/records.jsonl"
python3 "$BENCHES/suite/report.py" --records "$OUT/records.jsonl" --out "$BENCHES/results" \
  --command "benches/run.sh $ARGS" --quick "$QUICK" --wall "$(( $(date +%s) - START ))" --bin "$BIN"
echo "written: benches/results/latest.md, latest.json, curves.png ($(( $(date +%s) - START )) s)" >&2
