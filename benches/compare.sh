#!/usr/bin/env bash
# Peer comparison on real releases: for every update pair that ../shared/bench/fetch-data.sh
# provides, measure ferry against the tools users would pick instead (bsdiff, zstd
# --patch-from, bita, casync; see ../shared/bench/PEERS.md) and print a markdown table,
# also written to benches/RESULTS.md with the date, machine, tool versions and command.
#
# Usage: benches/compare.sh [--only PRODUCT] [--skip-peers] [--skip-slow] [DATA_DIR]
#   DATA_DIR      releases from fetch-data.sh (default: /tmp/ferry-bench-data)
#   --only P      only the pairs of product P (esbuild, numpy or polars)
#   --skip-peers  reuse the peer figures cached in benches/.cache/peers.json instead of
#                 measuring them again (pairs missing from the cache show "–")
#   --skip-slow   skip polars (111 MB; bsdiff alone takes minutes)
#
# Every HTTP tool is served by one private nginx on 127.0.0.1 (own conf, pid, logs and
# temp paths in a temp folder); its access log counts requests, body bytes
# ($body_bytes_sent) and bytes including response headers ($bytes_sent).
# Trees (numpy) are given to the single-file peers as a deterministic tar of the
# unpacked tree; ferry publishes the tree itself. Peer figures are cached per pair and
# tool version in benches/.cache/peers.json (not committed).
set -euo pipefail
BENCHES="$(cd "$(dirname "$0")" && pwd)"
cd "$BENCHES/.."
COMMAND="benches/compare.sh $*"

ONLY=""; SKIP_PEERS=0; SKIP_SLOW=0; DATA=/tmp/ferry-bench-data
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY=$2; shift 2 ;;
    --only=*) ONLY=${1#--only=}; shift ;;
    --skip-peers) SKIP_PEERS=1; shift ;;
    --skip-slow) SKIP_SLOW=1; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) DATA=$1; shift ;;
  esac
done
DATA=$(cd "$DATA" 2>/dev/null && pwd) || { echo "no data: run bash ../shared/bench/fetch-data.sh $DATA" >&2; exit 1; }
REL="$DATA/releases"

# product from to [via]: consecutive pairs, then the two-step jumps
PAIRS=(
  "esbuild 0.24.0 0.24.1"
  "esbuild 0.24.1 0.24.2"
  "numpy 2.1.1 2.1.2"
  "numpy 2.1.2 2.1.3"
  "polars 1.17.0 1.17.1"
  "esbuild 0.24.0 0.24.2 0.24.1"
  "numpy 2.1.1 2.1.3 2.1.2"
)
SELECTED=()
for p in "${PAIRS[@]}"; do
  set -- $p
  [ -n "$ONLY" ] && [ "$1" != "$ONLY" ] && continue
  [ "$SKIP_SLOW" = 1 ] && [ "$1" = polars ] && continue
  for v in "${@:2}"; do
    [ -e "$REL/$1/$v" ] || { echo "missing $REL/$1/$v: run bash ../shared/bench/fetch-data.sh $DATA" >&2; exit 1; }
  done
  SELECTED+=("$p")
done
[ ${#SELECTED[@]} -gt 0 ] || { echo "no pair selected (--only $ONLY?)" >&2; exit 2; }

for tool in nginx python3; do
  command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || { echo "$tool is required" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "/usr/bin/time is required: apt-get install -y time" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "== building ferry (cargo build --workspace --bins)" >&2
.ci/build-deps.sh --nginx
cargo build --workspace --bins --quiet

WORK=$(mktemp -d /tmp/ferry-compare.XXXXXX); chmod 755 "$WORK"
# A snapshot of the binaries just built: a rebuild of target/ during the run (another
# cargo command in the same tree) must not change the ferry being measured halfway.
BIN="$WORK/bin"; mkdir -p "$BIN"; cp target/debug/ferry target/debug/ferry-server "$BIN/"
NGINX_PID=""
cleanup() {
  if [ -n "$NGINX_PID" ]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CACHE_DIR="$BENCHES/.cache"; CACHE="$CACHE_DIR/peers.json"; mkdir -p "$CACHE_DIR"
RESULTS="$WORK/results.json"; echo '{}' > "$RESULTS"
NOTES="$WORK/notes.txt"; : > "$NOTES"
note() { echo "$*" >> "$NOTES"; echo "note: $*" >&2; }

# ---- JSON helper: results and cache are {pair: {tool: {figure: value}}} ----
cat > "$WORK/j.py" <<'PY'
import json, sys, os
def load(p):
    try:
        with open(p) as f: return json.load(f)
    except (OSError, ValueError): return {}
def save(p, d):
    tmp = p + ".tmp"
    with open(tmp, "w") as f: json.dump(d, f, indent=1, sort_keys=True)
    os.replace(tmp, p)
cmd = sys.argv[1]
if cmd == "put":      # put FILE PAIR TOOL key=value...
    p, pair, tool = sys.argv[2:5]
    d = load(p); e = d.setdefault(pair, {}).setdefault(tool, {})
    for kv in sys.argv[5:]:
        k, v = kv.split("=", 1)
        try: v = int(v)
        except ValueError:
            try: v = float(v)
            except ValueError: pass
        e[k] = v
    save(p, d)
elif cmd == "copy":   # copy FROM TO PAIR TOOL: 0 if copied, 1 if FROM lacks it
    src, dst, pair, tool = sys.argv[2:6]
    e = load(src).get(pair, {}).get(tool)
    if e is None: sys.exit(1)
    d = load(dst); d.setdefault(pair, {})[tool] = e; save(dst, d)
elif cmd == "field":  # field FILE PAIR TOOL KEY
    p, pair, tool, k = sys.argv[2:6]
    print(load(p).get(pair, {}).get(tool, {}).get(k, ""))
PY
J() { python3 "$WORK/j.py" "$@"; }

# ---- tool versions (cache keys) ----
pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }
HAVE_BSDIFF=0; HAVE_ZSTD=0; HAVE_BITA=0; HAVE_CASYNC=0
command -v bsdiff >/dev/null && command -v bspatch >/dev/null && HAVE_BSDIFF=1
command -v zstd >/dev/null && HAVE_ZSTD=1
BITA=$(command -v bita || { [ -x "$HOME/.cargo/bin/bita" ] && echo "$HOME/.cargo/bin/bita"; } || true)
[ -n "$BITA" ] && HAVE_BITA=1
command -v casync >/dev/null && HAVE_CASYNC=1
T_BSDIFF="bsdiff $(pkgver bsdiff)"
T_ZSTD="zstd $( (zstd --version 2>/dev/null || echo '?') | grep -o 'v[0-9.]*' | head -1)"
T_BITA="bita $( [ -n "$BITA" ] && "$BITA" --version 2>/dev/null | awk '{print $NF}' || echo '?')"
T_CASYNC="casync $( (casync --version 2>/dev/null || echo '?') | head -1 | awk '{print $NF}') ($(pkgver casync))"
T_NGINX="nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///')"
# ferry is whatever the working tree holds: the commit, plus a hash of uncommitted changes
T_FERRY="ferry $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if ! git diff --quiet HEAD -- . ':!benches' 2>/dev/null || [ -n "$(git ls-files --others --exclude-standard -- . ':!benches' 2>/dev/null)" ]; then
  T_FERRY="$T_FERRY + uncommitted changes (diff $( { git diff HEAD -- . ':!benches'; git ls-files --others --exclude-standard -z -- . ':!benches' | xargs -0 -r cat; } | sha256sum | cut -c1-10))"
fi

# ---- nginx: one private instance serving $WORK/www for the whole run ----
mkdir -p "$WORK/www" "$WORK/nginx"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
LOG="$WORK/nginx/access.log"
cat > "$WORK/nginx/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $WORK/nginx/pid; error_log $WORK/nginx/error.log warn;
events { worker_connections 256; }
http {
  log_format bench '\$request_method \$uri \$status \$body_bytes_sent \$bytes_sent "\$http_range"';
  access_log $LOG bench;
  default_type application/octet-stream;
  client_body_temp_path $WORK/nginx/b; proxy_temp_path $WORK/nginx/p; fastcgi_temp_path $WORK/nginx/f;
  uwsgi_temp_path $WORK/nginx/u; scgi_temp_path $WORK/nginx/s;
  server { listen 127.0.0.1:$PORT; root $WORK/www; }
}
CONF
start_nginx() {
  "$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" </dev/null & NGINX_PID=$!
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null && return 0
    kill -0 "$NGINX_PID" 2>/dev/null || { cat "$WORK/nginx/error.log" >&2; echo "nginx exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "nginx did not listen" >&2; exit 1
}
start_nginx
: > "$LOG"
log_mark() { sleep 0.3; wc -l < "$LOG"; }
# requests body_bytes total_bytes of the log lines after mark $1
log_since() { sleep 0.3; tail -n +"$(($1 + 1))" "$LOG" | awk '{n++; b+=$4; t+=$5} END {printf "%d %d %d\n", n, b, t}'; }

# /usr/bin/time wrapper: timed OUTFILE cmd... -> OUTFILE holds "seconds peak_kib"
timed() { local o=$1; shift; /usr/bin/time -o "$o" -f "%e %M" "$@"; }
tv() { tail -n 1 "$1" | awk -v f="$2" '{print $f}'; }   # field 1 = seconds, 2 = KiB

# ---- inputs ----
# A release folder holding one regular file is that file; otherwise a tree.
single() { local d="$REL/$1/$2" e; e=$(find "$d" -mindepth 1 -maxdepth 1); [ "$(echo "$e" | wc -l)" = 1 ] && [ -f "$e" ] && echo "$e"; }
ferry_src() { single "$1" "$2" || echo "$REL/$1/$2"; }
mkdir -p "$WORK/in"
peer_input() { # product version -> a single file (the release, or a deterministic tar of the tree)
  local f; if f=$(single "$1" "$2"); then echo "$f"; return; fi
  f="$WORK/in/$1-$2.tar"
  [ -f "$f" ] || tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -C "$REL/$1/$2" -cf "$f" .
  echo "$f"
}

# ---- peers ----
why() { sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -m1 -iE 'panicked|error|failed' || tail -1 "$1"; }
peer_bsdiff() { # key old new
  local d="$WORK/bsdiff"; rm -rf "$d"; mkdir -p "$d"
  echo "   bsdiff" >&2
  timed "$d/t1" bsdiff "$2" "$3" "$d/patch" || { note "bsdiff $1: failed"; return 1; }
  timed "$d/t2" bspatch "$2" "$d/out" "$d/patch" || { note "bspatch $1: failed"; return 1; }
  cmp -s "$d/out" "$3" || { note "bsdiff $1: bspatch output differs from the new release"; return 1; }
  J put "$CACHE" "$1" "$T_BSDIFF" bytes="$(stat -c %s "$d/patch")" \
    make_s="$(tv "$d/t1" 1)" make_kib="$(tv "$d/t1" 2)" apply_s="$(tv "$d/t2" 1)" apply_kib="$(tv "$d/t2" 2)"
  rm -rf "$d"
}
peer_zstd() {
  local d="$WORK/zstd"; rm -rf "$d"; mkdir -p "$d"
  echo "   zstd --patch-from" >&2
  timed "$d/t1" zstd -q -f -19 --long=31 --patch-from="$2" "$3" -o "$d/patch" 2>"$d/log" || { note "zstd $1: patch failed: $(tail -1 "$d/log")"; return 1; }
  timed "$d/t2" zstd -q -f -d --long=31 --patch-from="$2" "$d/patch" -o "$d/out" 2>"$d/log" || { note "zstd $1: apply failed: $(tail -1 "$d/log")"; return 1; }
  cmp -s "$d/out" "$3" || { note "zstd $1: patched output differs from the new release"; return 1; }
  J put "$CACHE" "$1" "$T_ZSTD" bytes="$(stat -c %s "$d/patch")" \
    make_s="$(tv "$d/t1" 1)" make_kib="$(tv "$d/t1" 2)" apply_s="$(tv "$d/t2" 1)" apply_kib="$(tv "$d/t2" 2)"
  rm -rf "$d"
}
peer_bita() {
  local slug=$4 d="$WORK/www/bita/$4" o="$WORK/bita-out"; rm -rf "$d" "$o"; mkdir -p "$d" "$o"
  echo "   bita" >&2
  "$BITA" compress --input "$2" "$d/old.cba" >/dev/null 2>"$o/log" || { note "bita $1: compress failed: $(tail -1 "$o/log")"; return 1; }
  timed "$o/t1" "$BITA" compress --input "$3" "$d/new.cba" >/dev/null 2>"$o/log" || { note "bita $1: compress failed: $(tail -1 "$o/log")"; return 1; }
  local m try
  for try in 1 2 3; do
    rm -f "$o/out"; m=$(log_mark)
    timed "$o/t2" "$BITA" clone --seed "$2" "$URL/bita/$slug/new.cba" "$o/out" >/dev/null 2>"$o/log" && break
    note "bita $1: clone attempt $try failed: $(why "$o/log")"
    [ $try = 3 ] && return 1
  done
  local r; r=$(log_since "$m")
  cmp -s "$o/out" "$3" || { note "bita $1: clone differs from the new release"; return 1; }
  set -- "$1" $r
  J put "$CACHE" "$1" "$T_BITA" requests="$2" bytes="$3" total_bytes="$4" \
    make_s="$(tv "$o/t1" 1)" make_kib="$(tv "$o/t1" 2)" apply_s="$(tv "$o/t2" 1)" apply_kib="$(tv "$o/t2" 2)"
  rm -rf "$d" "$o"
}
peer_casync() {
  local slug=$4 d="$WORK/www/casync/$4" o="$WORK/casync-out"; rm -rf "$d" "$o"; mkdir -p "$d" "$o"
  echo "   casync" >&2
  # blob mode: the release file (or tar of the tree) is one blob; chunks go to the store
  timed "$o/t1" casync make --store="$d/store" --chunk-size=16K:64K:256K "$d/new.caibx" "$3" >/dev/null 2>"$o/log" \
    || { note "casync $1: make failed: $(tail -1 "$o/log")"; return 1; }
  chmod -R a+rX "$d"
  local m try
  for try in 1 2 3; do
    rm -f "$o/out"; m=$(log_mark)
    timed "$o/t2" casync extract --store="$URL/casync/$slug/store" --seed="$2" "$URL/casync/$slug/new.caibx" "$o/out" >/dev/null 2>"$o/log" && break
    note "casync $1: extract attempt $try failed: $(why "$o/log")"
    [ $try = 3 ] && return 1
  done
  local r; r=$(log_since "$m")
  cmp -s "$o/out" "$3" || { note "casync $1: extracted blob differs from the new release"; return 1; }
  set -- "$1" $r
  J put "$CACHE" "$1" "$T_CASYNC" requests="$2" bytes="$3" total_bytes="$4" \
    make_s="$(tv "$o/t1" 1)" make_kib="$(tv "$o/t1" 2)" apply_s="$(tv "$o/t2" 1)" apply_kib="$(tv "$o/t2" 2)"
  rm -rf "$d" "$o"
}

# ---- ferry ----
ferry_pair() { # key slug product from to [via]
  local key=$1 slug=$2 prod=$3 from=$4 to=$5 via=${6:-}
  local d="$WORK/www/ferry/$slug" o="$WORK/ferry-out/$slug"; rm -rf "$d" "$o"; mkdir -p "$d" "$o"
  echo "   ferry" >&2
  "$BIN/ferry-server" keygen --out "$o/keys" >/dev/null || { note "ferry $key: keygen failed"; return 1; }
  pub() { "$BIN/ferry-server" publish --repo "$d/repo" --key "$o/keys/ferry.key" --channel stable --version "$1" "$(ferry_src "$prod" "$1")" >/dev/null 2>"$o/publish.err" \
            || { note "ferry $key: publish $1 failed: $(why "$o/publish.err")"; return 1; }; }
  pub "$from" || return 1
  chmod -R a+rX "$d"
  "$BIN/ferry" init --root "$o/root" --server "$URL/ferry/$slug/repo" --channel stable --public-key "$o/keys/ferry.pub" >/dev/null \
    || { note "ferry $key: init failed"; return 1; }
  "$BIN/ferry" update --root "$o/root" >/dev/null || { note "ferry $key: install of $from failed"; return 1; }
  if [ -n "$via" ]; then pub "$via" || return 1; fi
  timed "$o/t1" "$BIN/ferry-server" publish --repo "$d/repo" --key "$o/keys/ferry.key" --channel stable --version "$to" "$(ferry_src "$prod" "$to")" >/dev/null 2>"$o/publish.err" \
    || { note "ferry $key: publish $to failed: $(why "$o/publish.err")"; return 1; }
  chmod -R a+rX "$d"
  local m; m=$(log_mark)
  timed "$o/t2" "$BIN/ferry" update --root "$o/root" --json > "$o/update.json" 2>"$o/update.err" \
    || { cat "$o/update.err" >&2; note "ferry $key: update failed: $(why "$o/update.err")"; return 1; }
  sed 's/\x1b\[[0-9;]*m//g' "$o/update.err" | tee -a "$WORK/ferry-update.log" | sed 's/^/     /' >&2
  sed 's/\x1b\[[0-9;]*m//g' "$o/update.err" | grep -E 'WARN|ERROR' | while read -r l; do note "ferry $key update: $l"; done
  local r; r=$(log_since "$m")
  local installed="$o/root/current" want="$REL/$prod/$to"
  if f=$(single "$prod" "$to"); then cmp -s "$installed/$(basename "$f")" "$f" || { note "ferry $key: installed file differs"; return 1; }
  else diff -r "$installed" "$want" >/dev/null || { note "ferry $key: installed tree differs"; return 1; }; fi
  local jr jb; jr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$o/update.json")
  jb=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_downloaded"])' "$o/update.json")
  set -- $r
  [ "$1" = "$jr" ] || note "ferry $key: nginx counted $1 requests, ferry reported $jr"
  J put "$RESULTS" "$key" ferry requests="$1" bytes="$2" total_bytes="$3" reported_bytes="$jb" \
    publish_s="$(tv "$o/t1" 1)" publish_kib="$(tv "$o/t1" 2)" update_s="$(tv "$o/t2" 1)" update_kib="$(tv "$o/t2" 2)"
  rm -rf "$d" "$o"
}

# ---- run ----
PEER_TOOLS=()
[ $HAVE_BSDIFF = 1 ] && PEER_TOOLS+=("bsdiff|$T_BSDIFF") || note "bsdiff not installed (apt-get install -y bsdiff): skipped"
[ $HAVE_ZSTD = 1 ] && PEER_TOOLS+=("zstd|$T_ZSTD") || note "zstd not installed (apt-get install -y zstd): skipped"
[ $HAVE_BITA = 1 ] && PEER_TOOLS+=("bita|$T_BITA") || note "bita not installed (cargo install bita --version 0.15.0 --locked): skipped"
[ $HAVE_CASYNC = 1 ] && PEER_TOOLS+=("casync|$T_CASYNC") || note "casync not installed (apt-get install -y casync): skipped"

for p in "${SELECTED[@]}"; do
  set -- $p; prod=$1 from=$2 to=$3 via=${4:-}
  key="$prod $from->$to"; slug="$prod-$from-$to"
  echo "== $key${via:+ (via $via)}" >&2
  old="" new=""
  for t in "${PEER_TOOLS[@]}"; do
    name=${t%%|*} tkey=${t#*|}
    if [ "$SKIP_PEERS" = 1 ]; then
      J copy "$CACHE" "$RESULTS" "$key" "$tkey" || note "$key: no cached $tkey figures (run without --skip-peers)"
      continue
    fi
    [ -n "$old" ] || { old=$(peer_input "$prod" "$from"); new=$(peer_input "$prod" "$to"); }
    if "peer_$name" "$key" "$old" "$new" "$slug"; then J copy "$CACHE" "$RESULTS" "$key" "$tkey"; fi
  done
  ferry_pair "$key" "$slug" "$prod" "$from" "$to" "$via" || true
done

# ---- report ----
RESULT_FILE="$BENCHES/RESULTS.md"
python3 - "$RESULTS" "$T_BSDIFF" "$T_ZSTD" "$T_BITA" "$T_CASYNC" "${SELECTED[@]}" > "$WORK/tables.md" <<'PY'
import json, sys
res = json.load(open(sys.argv[1])); TB, TZ, TI, TC = sys.argv[2:6]; pairs = sys.argv[6:]
def n(x): return f"{x:,}"
def get(pair, tool, k):
    return res.get(pair, {}).get(tool, {}).get(k)
def size(pair, tool, reqs=False):
    b = get(pair, tool, "bytes")
    if b is None: return "–"
    return n(b) + (f" ({n(get(pair, tool, 'requests'))})" if reqs else "")
def ratio(pair, tool):
    f, b = get(pair, "ferry", "bytes"), get(pair, tool, "bytes")
    return "–" if f is None or not b else f"{f / b:.2f}"
def mib(k): return f"{k / 1024:.0f} MiB"
def tm(pair, tool, pre):
    s = get(pair, tool, pre + "_s")
    if s is None: return "–"
    k = get(pair, tool, pre + "_kib")
    return f"{s:.2f} s, {mib(k)}" if k is not None else f"{s:.2f} s"
def label(p):
    w = p.split(); return f"{w[0]} {w[1]}→{w[2]}" + (f" (via {w[3]})" if len(w) > 3 else "")
print("## Bytes downloaded for one update (requests in brackets)\n")
print("| pair | ferry bytes (requests) | ferry incl. headers | bsdiff | zstd patch-from | bita (requests) | casync (requests) | ferry/bsdiff | ferry/bita |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for p in pairs:
    w = p.split(); key = f"{w[0]} {w[1]}->{w[2]}"
    th = get(key, "ferry", "total_bytes")
    print(f"| {label(p)} | {size(key, 'ferry', True)} | {'–' if th is None else n(th)} | {size(key, TB)} | {size(key, TZ)} "
          f"| {size(key, TI, True)} | {size(key, TC, True)} | {ratio(key, TB)} | {ratio(key, TI)} |")
print("\n## Time and peak memory (wall seconds, peak RSS)\n")
print("| pair | ferry publish TO | ferry update | bsdiff | bspatch | zstd patch | zstd apply | bita compress NEW | bita clone | casync make | casync extract |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for p in pairs:
    w = p.split(); key = f"{w[0]} {w[1]}->{w[2]}"
    print(f"| {label(p)} | {tm(key,'ferry','publish')} | {tm(key,'ferry','update')} | {tm(key,TB,'make')} | {tm(key,TB,'apply')} "
          f"| {tm(key,TZ,'make')} | {tm(key,TZ,'apply')} | {tm(key,TI,'make')} | {tm(key,TI,'apply')} | {tm(key,TC,'make')} | {tm(key,TC,'apply')} |")
PY

{
  echo "# ferry vs peers on real releases"
  echo
  echo "Generated $(date -u '+%Y-%m-%d %H:%M UTC') by \`$COMMAND\` (data: \`$DATA\`, from \`../shared/bench/fetch-data.sh\`)."
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(uname -sr), memory:"
  echo
  echo '```'
  free -h
  echo '```'
  echo
  echo "Tools: $T_FERRY (dev profile, optimised dependencies; \`ferry-server publish\` defaults), $T_BSDIFF, $T_ZSTD (\`-19 --long=31 --patch-from=OLD\`),"
  echo "$T_BITA (defaults; \`bita clone --seed OLD URL\`), $T_CASYNC (blob mode, \`--chunk-size=16K:64K:256K\`, \`extract --seed=OLD\` from an HTTP store), $T_NGINX."
  [ "$SKIP_PEERS" = 1 ] && echo "Peer figures reused from \`benches/.cache/peers.json\` (--skip-peers)."
  echo
  echo "Bytes are what the client downloads for the update: the patch file for bsdiff and zstd; for bita, casync"
  echo "and ferry the response body bytes (\`\$body_bytes_sent\`) in a loopback nginx access log, index and metadata"
  echo "included; \"ferry incl. headers\" is \`\$bytes_sent\`. Ratios compare body bytes. numpy is a tree: ferry"
  echo "publishes it as is, the other tools get a deterministic tar of it (\`tar --sort=name --mtime=@0 --owner=0"
  echo "--group=0 --numeric-owner --format=gnu\`). For the two-step pairs ferry published FROM, the middle release and TO,"
  echo "and updated FROM→TO in one go; patch tools diff FROM against TO directly. Times are single runs on a possibly"
  echo "shared machine: rough. Byte counts are exact."
  echo
  cat "$WORK/tables.md"
  if [ -s "$NOTES" ]; then echo; echo "## Notes"; echo; sed 's/^/- /' "$NOTES"; fi
} > "$WORK/RESULTS.md"
cp "$WORK/RESULTS.md" "$RESULT_FILE"
cat "$WORK/tables.md"
[ -s "$NOTES" ] && { echo; sed 's/^/note: /' "$NOTES"; }
echo; echo "written to benches/RESULTS.md" >&2
