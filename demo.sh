#!/usr/bin/env bash
# The whole ferry path on loopback: publish two releases, serve them with the embedded
# server, install the first, update to the second, roll back, and print what the
# delta saved. Everything happens in a temporary folder that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")"

.ci/build-deps.sh
cargo build --workspace --bins --quiet
BIN="$PWD/target/debug"
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# Two releases of a sample application: ~6 MB of binaries and libraries in which
# release 1.1.0 patches a few places, replaces one plugin and adds a file.
python3 - "$WORK/src" <<'PY'
import os, random, sys
root = sys.argv[1]
def put(rel, data, mode=0o644):
    p = os.path.join(root, rel); os.makedirs(os.path.dirname(p), exist_ok=True)
    open(p, "wb").write(data); os.chmod(p, mode)
def noise(seed, n):
    # Half random, half repetitive, 256-byte blocks: compresses roughly like real binaries.
    r = random.Random(seed)
    return b"".join(r.randbytes(256) if r.random() < 0.5 else bytes([r.randrange(8)]) * 256
                    for _ in range(n // 256))
for ver, patches in (("1.0.0", 0), ("1.1.0", 3)):
    base = f"{ver}"
    app = bytearray(noise(1, 3_000_000))
    for k in range(patches):
        at = 400_000 + k * 900_000
        app[at:at + 2000] = noise(100 + k, 2000)
    put(f"{base}/bin/app", bytes(app), 0o755)
    put(f"{base}/lib/libcore.so", noise(2, 2_000_000))
    put(f"{base}/lib/plugin.so", noise(3 + patches, 500_000))
    put(f"{base}/share/README", f"sample app {ver}\n".encode() * 100)
    if patches:
        put(f"{base}/share/CHANGES", b"1.1.0: faster, smaller\n")
PY

"$BIN/ferry-server" keygen --out "$WORK/keys" >/dev/null
for ver in 1.0.0; do
  "$BIN/ferry-server" publish --repo "$WORK/repo" --key "$WORK/keys/ferry.key" \
    --channel stable --version $ver --zstd-level 9 "$WORK/src/$ver" >/dev/null
done

# Serve on a port the OS picks; the server prints it.
FERRY_LOG=warn "$BIN/ferry-server" serve --repo "$WORK/repo" --listen 127.0.0.1:0 > "$WORK/serve.out" &
SERVER_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^listening on //p' "$WORK/serve.out")
echo "ferry-server serving $WORK/repo at $URL"

ROOT="$WORK/opt/app"
"$BIN/ferry" init --root "$ROOT" --server "$URL" --channel stable --public-key "$WORK/keys/ferry.pub"
echo; echo "== fresh install of 1.0.0"
"$BIN/ferry" update --root "$ROOT"

"$BIN/ferry-server" publish --repo "$WORK/repo" --key "$WORK/keys/ferry.key" \
  --channel stable --version 1.1.0 --zstd-level 9 "$WORK/src/1.1.0"
echo; echo "== update to 1.1.0"
UPDATE=$("$BIN/ferry" update --root "$ROOT" --json)
echo "$UPDATE"
diff -r "$ROOT/current" "$WORK/src/1.1.0" && echo "installed tree is identical to the published 1.1.0"

echo; echo "== rollback"
"$BIN/ferry" rollback --root "$ROOT"
diff -r "$ROOT/current" "$WORK/src/1.0.0" && echo "installed tree is identical to 1.0.0 again"
echo; echo "== history"
"$BIN/ferry" history --root "$ROOT"

echo
python3 - "$UPDATE" "$WORK/src/1.1.0" <<'PY'
import json, os, subprocess, sys
u = json.loads(sys.argv[1]); src = sys.argv[2]
raw = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs)
tar = subprocess.run(["tar", "-C", src, "-cf", "-", "."], capture_output=True, check=True).stdout
gz = len(subprocess.run(["gzip", "-9"], input=tar, capture_output=True, check=True).stdout)
got = u["bytes_downloaded"]
print(f"update 1.0.0 -> 1.1.0 downloaded {got:,} bytes in {u['requests']} requests")
print(f"  release size {raw:,} bytes; tar.gz of it {gz:,} bytes")
print(f"  saved {100 * (1 - got / gz):.1f}% against downloading the tar.gz, {100 * (1 - got / raw):.1f}% against the raw files")
PY
