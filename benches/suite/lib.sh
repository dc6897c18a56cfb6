# Shared by the scripts of benches/suite/ (sourced; run.sh exports the environment):
#   BIN    release binaries (ferry, ferry-server, suite-tool)   OUT   results folder
#   WORK   scratch folder of this section (removed by run.sh)   QUICK 1 for --quick
#   DATA   real releases from ../shared/bench/fetch-data.sh     SUITE this folder
set -euo pipefail
: "${BIN:?run through benches/run.sh}" "${OUT:?}" "${WORK:?}" "${QUICK:?}" "${DATA:?}" "${SUITE:?}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
SECTION=$(basename "$0" .sh)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/m"
chmod 755 "$WORK"

say() { echo "[$SECTION] $*" >&2; }
note() { python3 "$SUITE/rec.py" "$OUT/records.jsonl" kind=note section="$SECTION" text="$*"; say "note: $*"; }

# M NAME CMD...: run CMD measured (measure.py); figures in $WORK/m/NAME.json
M() { local n=$1; shift; python3 "$SUITE/measure.py" --out "$WORK/m/$n.json" -- "$@"; }
# MO NAME STDOUT CMD...: the same with the command's stdout in a file
MO() { local n=$1 o=$2; shift 2; python3 "$SUITE/measure.py" --out "$WORK/m/$n.json" --stdout "$o" -- "$@"; }
# F NAME FIELD: one figure of a measured run
F() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/m/$1.json" "$2"; }
# J FILE KEY: one field of a JSON file (dotted keys walk objects)
J() { python3 -c 'import json,sys
v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$1" "$2"; }
# rec key=value...: one row of the results (see rec.py)
rec() { python3 "$SUITE/rec.py" "$OUT/records.jsonl" section="$SECTION" "$@"; }
# secs: a date delta in seconds between two `now` readings
now() { date +%s.%N; }
delta() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 4))" "$1" "$2"; }
sum_size() { du -sb --apparent-size "$@" | awk '{s+=$1} END {print s}'; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { local i; for i in $(seq 300); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0; sleep 0.1; done; say "port $1 never answered"; return 1; }

# nginx_start NAME ROOT PORT [WORKERS] [H2PORT]: a private nginx (sendfile on) serving ROOT
# on 127.0.0.1:PORT (HTTP/1.1) and H2PORT (HTTP/2 cleartext); its pid in NGINX_PID.
nginx_start() {
  local name=$1 root=$2 port=$3 workers=${4:-1} h2=${5:-} d="$WORK/nginx-$1"
  mkdir -p "$d"
  cat > "$d/nginx.conf" <<CONF
daemon off; worker_processes $workers; pid $d/pid; error_log $d/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 4096; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000; keepalive_timeout 120s;
  default_type application/octet-stream;
  client_body_temp_path $d/b; proxy_temp_path $d/p; fastcgi_temp_path $d/f; uwsgi_temp_path $d/u; scgi_temp_path $d/s;
  server { listen 127.0.0.1:$port; root $root; }
  $( [ -n "$h2" ] && echo "server { listen 127.0.0.1:$h2 http2; root $root; }" )
}
CONF
  "$NGINX" -c "$d/nginx.conf" -p "$d" </dev/null & NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_port "$port"
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# ferry helpers
keys() { [ -f "$WORK/keys/ferry.key" ] || "$BIN/ferry-server" keygen --out "$WORK/keys" >/dev/null; }
# publish_m NAME REPO VERSION PATH [ARGS...]: a measured publish, its --json in $WORK/NAME.pub.json
publish_m() {
  local n=$1 repo=$2 v=$3 src=$4; shift 4; keys
  MO "$n" "$WORK/$n.pub.json" "$BIN/ferry-server" publish --repo "$repo" --key "$WORK/keys/ferry.key" \
    --channel stable --version "$v" --json "$@" "$src"
  chmod -R a+rX "$repo"
}
ferry_init() { # ROOT URL
  rm -rf "$1"; "$BIN/ferry" init --root "$1" --server "$2" --channel stable --public-key "$WORK/keys/ferry.pub" >/dev/null
}
# update_m NAME ROOT [ARGS...]: a measured `ferry update --json`, its output in $WORK/NAME.upd.json
update_m() { local n=$1 root=$2; shift 2; MO "$n" "$WORK/$n.upd.json" "$BIN/ferry" update --root "$root" --json --quiet "$@"; }
mib() { python3 -c "import sys; print(round(int(sys.argv[1]) / 1048576, 1))" "$1"; }

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

# fresh_rounds NAME ROOT URL REF_CMD ROUNDS: a fresh install (`ferry init`, `sync`, then
# `ferry update` + `sync` timed) and the reference command (which writes $WORK/out),
# alternating ROUNDS times: a fresh install is a fraction of a second, and one run of
# either side on a shared machine drifts by a third. Sets FR_F and FR_R to the medians
# (s) and FR_RUNS to every run; the last update's output stays in $WORK/NAME.upd.json.
fresh_rounds() {
  local n=$1 root=$2 url=$3 ref=$4 rounds=$5 fs=() rs=() r t0 t1
  for r in $(seq "$rounds"); do
    ferry_init "$root" "$url"
    # Nothing dirty at the start: ferry's syncfs (and sync) would otherwise also write
    # out what publish and the other side left in the page cache.
    sync
    update_m "$n" "$root"
    t0=$(now); sync; t1=$(now)
    fs+=("$(python3 -c "print(round($(F "$n" wall_s) + $(delta "$t0" "$t1"), 4))")")
    sync
    M "$n-ref" bash -c "$ref"
    rs+=("$(F "$n-ref" wall_s)")
    rm -f "$WORK/out"
  done
  FR_F=$(median "${fs[@]}"); FR_R=$(median "${rs[@]}")
  FR_RUNS="medians of $rounds alternating runs (ferry ${fs[*]} s; reference ${rs[*]} s)"
}
