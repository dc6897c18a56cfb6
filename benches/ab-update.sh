#!/usr/bin/env bash
# Two builds of ferry side by side on the polars diff update: the whole `ferry update` +
# `sync` from a loopback nginx, alternating runs on fresh copies of one root, then
# `bspatch` + `sync` of the same pair as the suite's reference.
#
#   benches/ab-update.sh OLD_BIN NEW_BIN [ROUNDS] [--whole-manifest]
#
# OLD_BIN and NEW_BIN are directories holding `ferry` and `ferry-server` (release builds:
# `cargo build --release -p ferry-client -p ferry-server`); NEW_BIN's ferry-server
# publishes. --whole-manifest deletes the manifest diff from the repository, so the
# agent fetches the whole manifest and plans the listed diff (the path where the tree is
# built while the diff is applied). Data: ../shared/bench/fetch-data.sh (polars 1.17.0,
# 1.17.1) in $DATA (default /tmp/ferry-bench-data). Prints one line per run.
set -euo pipefail
OLD=$(cd "$1" && pwd); NEW=$(cd "$2" && pwd); ROUNDS=${3:-4}; WHOLE=${4:-}
DATA=${DATA:-/tmp/ferry-bench-data}; D=$DATA/releases/polars
[ -f "$D/1.17.1/polars.abi3.so" ] || { echo "missing polars in $DATA: run ../shared/bench/fetch-data.sh" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
W=$(mktemp -d /tmp/ferry-ab.XXXXXX); chmod 755 "$W"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$W/www" "$W/ng"
cat > "$W/ng/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $W/ng/pid; error_log $W/ng/error.log warn;
events { worker_connections 1024; }
http { access_log off; sendfile on; tcp_nopush on; default_type application/octet-stream;
  client_body_temp_path $W/ng/b; proxy_temp_path $W/ng/p; fastcgi_temp_path $W/ng/f; uwsgi_temp_path $W/ng/u; scgi_temp_path $W/ng/s;
  server { listen 127.0.0.1:$PORT; root $W/www; } }
CONF
"$NGINX" -c "$W/ng/nginx.conf" -p "$W/ng" </dev/null & NG=$!
trap 'kill $NG 2>/dev/null; wait $NG 2>/dev/null; rm -rf "$W"' EXIT
publish() { "$NEW/ferry-server" publish --repo "$W/www/repo" --key "$W/keys/ferry.key" --channel stable --version "$1" "$D/$1" >/dev/null; }
"$NEW/ferry-server" keygen --out "$W/keys" >/dev/null
publish 1.17.0
"$NEW/ferry" init --root "$W/root0" --server "http://127.0.0.1:$PORT/repo" --channel stable --public-key "$W/keys/ferry.pub" >/dev/null
"$NEW/ferry" update --root "$W/root0" --quiet
publish 1.17.1
if [ "$WHOLE" = --whole-manifest ]; then
  # Manifest diffs are the repository's small zstd frames (archives are large ones).
  python3 - "$W/www/repo/objects" <<'PY'
import os, sys
for d, _, fs in os.walk(sys.argv[1]):
    for f in fs:
        p = os.path.join(d, f)
        if os.path.getsize(p) < 4 << 20 and open(p, "rb").read(4) == b"\x28\xb5\x2f\xfd":
            os.remove(p)
PY
fi
chmod -R a+rX "$W/www"
timed() { local s e; sync; s=$(date +%s.%N); "$@"; sync; e=$(date +%s.%N); python3 -c "print(f'{$e - $s:.3f}')"; }
for i in $(seq "$ROUNDS"); do
  for side in old new; do
    bin=$OLD; [ $side = new ] && bin=$NEW
    rm -rf "$W/r"; cp -a "$W/root0" "$W/r"
    echo "$side ferry update + sync: $(timed "$bin/ferry" update --root "$W/r" --quiet) s"
  done
done
if command -v bsdiff >/dev/null; then
  bsdiff "$D/1.17.0/polars.abi3.so" "$D/1.17.1/polars.abi3.so" "$W/bs.patch"
  for i in 1 2; do
    echo "bspatch + sync: $(timed bspatch "$D/1.17.0/polars.abi3.so" "$W/bsout" "$W/bs.patch") s"
    rm -f "$W/bsout"
  done
fi
