#!/usr/bin/env bash
# Many agents fetching one large archive at once from `ferry-server serve`, with the
# repository in a folder, in a bucket (SeaweedFS on loopback), and in a bucket with the
# local disk cache; nginx on the same folder as the reference static host.
#
#   benches/serve-load.sh [--clients 100] [--size-mb 100] [--waves 2]
#
# Prints one Markdown row per (setup, wave): wall time for every client to finish,
# aggregate throughput (clients x size / wall time) and the server's peak RSS (VmHWM of
# the serving process, which for nginx is its one worker). What it measures is the
# whole path on this machine: the clients, the server and SeaweedFS share its cores.
# Uses the binaries in target/debug (dependencies optimised) unless FERRY_BIN_DIR says
# otherwise; needs curl, nginx and SeaweedFS (.ci/build-deps.sh --nginx --seaweedfs).
set -euo pipefail
cd "$(dirname "$0")/.."
clients=100 size_mb=100 waves=2
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift 2 ;;
    --size-mb) size_mb=$2; shift 2 ;;
    --waves) waves=$2; shift 2 ;;
    *) echo "serve-load.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=${FERRY_BIN_DIR:-target/debug}
[ -x "$bin/ferry-server" ] || { echo "serve-load.sh: $bin/ferry-server missing (cargo build --workspace --bins)" >&2; exit 2; }
. benches/seaweedfs.sh
nginx=$(command -v nginx || echo /usr/sbin/nginx)

work=$(mktemp -d)
# nginx workers run as another user when started by root.
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_http() { for _ in $(seq 1 300); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }

# One incompressible file: the archive is as large as the release.
mkdir -p "$work/release"
head -c "$((size_mb << 20))" /dev/urandom > "$work/release/blob.bin"
"$bin/ferry-server" keygen --out "$work/keys" >/dev/null
publish() {
  "$bin/ferry-server" publish --repo "$1" --key "$work/keys/ferry.key" --channel stable \
    --version 1.0.0 --zstd-level 1 --json "$work/release"
}
archive=$(publish "$work/repo" | python3 -c 'import json,sys; print(json.load(sys.stdin)["archive"])')
rel="objects/${archive:0:2}/${archive:2}"
[ -f "$work/repo/$rel" ] || rel=$(cd "$work/repo" && find objects -type f -size +1M | head -1)
bytes=$(stat -c %s "$work/repo/$rel")

seaweedfs_start "$work/weed" || { kill "${SEAWEEDFS_PID:-}" 2>/dev/null; exit 1; }
pids+=("$SEAWEEDFS_PID")
publish s3://ferry/bench >/dev/null

peak_rss_mb() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

# Runs the waves against $1 (base URL), reporting the peak RSS of process $2.
load() {
  local name=$1 url=$2 pid=$3
  wait_http "$url/channels/stable/head"
  for wave in $(seq 1 "$waves"); do
    local start end
    start=$(date +%s.%N)
    for _ in $(seq 1 "$clients"); do
      curl -sf -o /dev/null "$url/$rel" &
    done
    local failed=0
    for job in $(jobs -p); do
      case " ${pids[*]} " in *" $job "*) continue ;; esac
      wait "$job" || failed=$((failed + 1))
    done
    end=$(date +%s.%N)
    python3 - "$name" "$wave" "$start" "$end" "$bytes" "$clients" "$(peak_rss_mb "$pid")" "$failed" <<'EOF'
import sys
name, wave, start, end, size, n, rss, failed = sys.argv[1:]
wall = float(end) - float(start)
total = int(size) * int(n)
print(f"| {name} | {wave} | {n} x {int(size)/1e6:.1f} MB | {wall:.1f} s | {total/wall/1e6:.0f} MB/s | {rss} MB | {failed} |")
EOF
  done
}

echo "| setup | wave | fetched | wall time | throughput | peak RSS | failed |"
echo "|---|---|---|---|---|---|---|"
serve() {
  local port; port=$(free_port)
  "$bin/ferry-server" serve --listen "127.0.0.1:$port" --max-connections 2000 "$@" >"$work/serve.log" 2>&1 &
  pids+=($!)
  echo "$port $!"
}
read -r port pid < <(serve --repo "$work/repo"); pids+=("$pid")
load "ferry-server, folder" "http://127.0.0.1:$port" "$pid"; kill "$pid"
read -r port pid < <(serve --repo s3://ferry/bench); pids+=("$pid")
load "ferry-server, s3://" "http://127.0.0.1:$port" "$pid"; kill "$pid"
read -r port pid < <(serve --repo s3://ferry/bench --cache-dir "$work/cache" --cache-size 1GiB); pids+=("$pid")
load "ferry-server, s3:// + --cache-dir" "http://127.0.0.1:$port" "$pid"; kill "$pid"

port=$(free_port)
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  server { listen 127.0.0.1:$port; root $work/repo; }
}
EOF
"$nginx" -c "$work/nginx/nginx.conf" -p "$work/nginx" -g 'daemon off;' 2>>"$work/nginx/error.log" &
pids+=($!)
wait_http "http://127.0.0.1:$port/channels/stable/head"
worker=$(pgrep -P "$!" | head -1)
load "nginx, folder" "http://127.0.0.1:$port" "${worker:-$!}"
