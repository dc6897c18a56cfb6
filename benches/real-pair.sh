#!/usr/bin/env bash
# Measures one real update end to end against nginx: publish two consecutive real
# releases (from ../shared/bench/fetch-data.sh), serve the repository with a private
# nginx on 127.0.0.1, install the first with `ferry`, update to the second, and count
# the update's requests and body bytes in nginx's access log.
#
# Usage: benches/real-pair.sh PRODUCT FROM TO [DATA_DIR]
#   e.g. benches/real-pair.sh esbuild 0.24.0 0.24.1
set -euo pipefail
cd "$(dirname "$0")/.."
PRODUCT=$1; FROM=$2; TO=$3; DATA=${4:-/tmp/ferry-bench-data}
REL="$DATA/releases/$PRODUCT"
[ -d "$REL/$FROM" ] || { echo "missing $REL/$FROM: run ../shared/bench/fetch-data.sh $DATA" >&2; exit 1; }
.ci/build-deps.sh --nginx
cargo build --workspace --bins --quiet
BIN="$PWD/target/debug"
WORK=$(mktemp -d); chmod 755 "$WORK"
NGINX_PID=""
cleanup() { [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# A release folder with one file is published as that single file.
src() { local d="$REL/$1"; if [ "$(find "$d" -mindepth 1 -maxdepth 1 | wc -l)" = 1 ] && [ -f "$(find "$d" -mindepth 1 -maxdepth 1)" ]; then find "$d" -mindepth 1 -maxdepth 1; else echo "$d"; fi; }

"$BIN/ferry-server" keygen --out "$WORK/keys" >/dev/null
publish() {
  local TIME=(); [ -x /usr/bin/time ] && TIME=(/usr/bin/time -f "publish $1: %e s, %M KiB peak")
  "${TIME[@]}" "$BIN/ferry-server" publish --repo "$WORK/repo" \
    --key "$WORK/keys/ferry.key" --channel stable --version "$1" "$(src "$1")" >/dev/null
}
publish "$FROM"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $WORK/nginx/pid; error_log $WORK/nginx/error.log warn;
events { worker_connections 64; }
http {
  log_format ferry '\$request_method \$uri \$status \$body_bytes_sent "\$http_range"';
  access_log $WORK/nginx/access.log ferry;
  client_body_temp_path $WORK/nginx/b; proxy_temp_path $WORK/nginx/p; fastcgi_temp_path $WORK/nginx/f;
  uwsgi_temp_path $WORK/nginx/u; scgi_temp_path $WORK/nginx/s;
  server { listen 127.0.0.1:$PORT; root $WORK/repo; }
}
CONF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & NGINX_PID=$!
sleep 0.5

ROOT="$WORK/root"
"$BIN/ferry" init --root "$ROOT" --server "http://127.0.0.1:$PORT" --channel stable --public-key "$WORK/keys/ferry.pub" >/dev/null
"$BIN/ferry" update --root "$ROOT" >/dev/null
publish "$TO"
BEFORE=$(wc -l < "$WORK/nginx/access.log")
OUT=$("$BIN/ferry" update --root "$ROOT" --json)
sleep 0.2
echo "ferry update $PRODUCT $FROM -> $TO: $OUT"
echo "nginx access log for the update:"
tail -n +"$((BEFORE + 1))" "$WORK/nginx/access.log" | sed 's/^/  /'
tail -n +"$((BEFORE + 1))" "$WORK/nginx/access.log" | awk '{n++; b+=$4} END {printf "requests: %d, body bytes: %d\n", n, b}'
diff -r "$ROOT/current" "$REL/$TO" && echo "installed tree identical to $TO"
