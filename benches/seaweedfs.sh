# Sourced by the benchmark scripts that need a bucket: a private SeaweedFS on loopback,
# started as tests/harness/seaweedfs.rs starts it (bucket `ferry`, anonymous read, which
# the readiness probe relies on: a missing key answers NoSuchKey once the bucket exists).
#
#   . benches/seaweedfs.sh
#   seaweedfs_start DIR    # data and log in DIR; exports the AWS_* environment and
#                          # sets SEAWEEDFS_PID; fails naming the log if it does not answer
#
# Needs .ci/build-deps.sh --seaweedfs (the `weed` binary in $SEAWEEDFS_VENV).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# SeaweedFS also listens on each port + 10000 (gRPC): pick ports below 45000 with both
# free, as the test harness does, never an ephemeral one near the top of the range.
weed_port() {
  python3 -c '
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
while True:
    p = random.randint(20000, 34999)
    if free(p) and free(p + 10000):
        print(p); break'
}

seaweedfs_start() {
  local dir=$1 weed=${SEAWEEDFS_VENV:-$HOME/.cache/ferry/seaweedfs}/bin/weed s3port
  [ -x "$weed" ] || { echo "$weed missing: run .ci/build-deps.sh --seaweedfs" >&2; return 2; }
  mkdir -p "$dir/data"
  cat > "$dir/s3.json" <<JSON
{"identities": [{"name": "ferry", "credentials": [{"accessKey": "bench", "secretKey": "bench-secret"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
  {"name": "anonymous", "actions": ["Read:ferry"]}]}
JSON
  s3port=$(weed_port)
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret "$weed" mini -dir="$dir/data" \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$s3port" -master.port="$(weed_port)" \
    -volume.port="$(weed_port)" -filer.port="$(weed_port)" -admin.port="$(weed_port)" \
    -s3.port.iceberg=0 -s3.port.lance=0 -bucket=ferry -admin.ui=false -webdav=false \
    -s3.config="$dir/s3.json" >"$dir/weed.log" 2>&1 &
  SEAWEEDFS_PID=$!
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL="http://127.0.0.1:$s3port" AWS_ALLOW_HTTP=true \
    AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false
  local _
  for _ in $(seq 1 300); do
    curl -s "http://127.0.0.1:$s3port/ferry/.probe" | grep -q NoSuchKey && return 0
    sleep 0.1
  done
  echo "SeaweedFS did not answer on port $s3port within 30 s; its log: $dir/weed.log" >&2
  tail -5 "$dir/weed.log" >&2
  return 1
}
