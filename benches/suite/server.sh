#!/usr/bin/env bash
# `ferry-server serve` (default settings) vs nginx (sendfile on, one worker per core) on
# loopback under 1,000 concurrent keep-alive connections: wrk (HTTP/1.1) and h2load
# (HTTP/2 cleartext, prior knowledge) for the channel head, 64 KiB ranges and 4 MiB
# ranges of a 256 MiB archive (--quick: 64 MiB, shorter runs). Each server is started
# fresh for each kind of request: its peak RSS (VmHWM; nginx: master + workers) is that
# run's. wrk picks a random offset per request; h2load repeats one range. Each server
# gets a warm-up of wrk (3 s) after it starts and before its measured runs: the first
# run after the archive is written was up to a third slower whichever server took it
# (nginx 44,000 req/s first, 65,500 second, ferry the other way round, 64 KiB ranges),
# and ferry always came first. wrk waits up to 10 s for a response (its default, 2 s,
# counted the slowest 4 MiB responses as errors for both servers: at 2.6-2.8 GB/s
# shared by 1,000 connections a 4 MiB response takes 1.5 s on average and its p99 was
# 1.87-1.96 s).
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then SIZE=64000000; DUR=${SERVER_DUR:-3}; WARM=1; else SIZE=268435456; DUR=10; WARM=3; fi
CONNS=1000; NP=$(nproc)
for t in wrk h2load; do command -v $t >/dev/null || { note "$t missing (apt-get install -y wrk nghttp2-client): its rows are missing"; }; done
mkdir -p "$WORK/src"
"$BIN/suite-tool" gen --out "$WORK/src" --bytes "$SIZE" --files 1 --seed 31
publish_m pub "$WORK/repo" 1.0.0 "$WORK/src" --zstd-level 1
rm -rf "$WORK/src"
ARCH=$(J "$WORK/pub.pub.json" archive); ASIZE=$(J "$WORK/pub.pub.json" archive_size)
APATH="/objects/${ARCH:0:2}/$ARCH"
[ -f "$WORK/repo$APATH" ] || { note "archive not at $APATH"; exit 1; }

hwm_tree() { # PID: VmHWM of it and its children, KiB
  local p s=0
  for p in "$1" $(pgrep -P "$1" || true); do s=$(( s + $(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) )); done
  echo "$s"
}
lua() { # LEN -> a wrk script asking random ranges of LEN bytes of the archive
  cat > "$WORK/range-$1.lua" <<LUA
math.randomseed(os.time())
request = function()
  local s = math.random(0, $ASIZE - $1)
  return wrk.format("GET", "$APATH", {["Range"] = "bytes=" .. s .. "-" .. (s + $1 - 1)})
end
LUA
  echo "$WORK/range-$1.lua"
}
parse_wrk() { python3 - "$1" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def unit(v, u):
    m = {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}
    return float(v) * m[u]
def size(v, u):
    return float(v) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}.get(u, 1)
r = {}
m = re.search(r"Requests/sec:\s+([\d.]+)", t); r["rps"] = float(m.group(1)) if m else None
m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", t); r["bps"] = size(*m.groups()) if m else None
for p in ("50", "99"):
    m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s|m)\b", t); r[f"p{p}_ms"] = unit(*m.groups()) if m else None
err = 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
if m: err += sum(map(int, m.groups()))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if m: err += int(m.group(1))
r["errors"] = err
print(" ".join(f"{k}={'' if v is None else round(v, 3)}" for k, v in r.items()))
PY
}
parse_h2() { python3 - "$1" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
r = {}
m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s, ([\d.]+)(\w+)/s", t)
mult = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}
r["rps"] = float(m.group(1)) if m else None
r["bps"] = float(m.group(2)) * mult.get(m.group(3), 1) if m else None
m = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", t)
conv = {"us": 1e-3, "ms": 1, "s": 1e3}
r["mean_ms"] = float(m.group(5)) * conv[m.group(6)] if m else None
m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", t)
r["errors"] = (int(m.group(5)) + int(m.group(6)) + int(m.group(7))) if m else None
m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", t)
if m and r["errors"] is not None: r["errors"] += int(m.group(3)) + int(m.group(4))
print(" ".join(f"{k}={'' if v is None else round(v, 3)}" for k, v in r.items()))
PY
}

start_server() { # ferry|nginx -> PID in SRV_PID, ports in H1 and H2
  H1=$(free_port); H2=$(free_port)
  if [ "$1" = nginx ]; then
    nginx_start "load" "$WORK/repo" "$H1" "$NP" "$H2"; SRV_PID=$NGINX_PID
  else
    "$BIN/ferry-server" serve --repo "$WORK/repo" --listen "127.0.0.1:$H1" >/dev/null 2>"$WORK/serve.err" & SRV_PID=$!
    PIDS+=("$SRV_PID"); wait_port "$H1"; H2=$H1
  fi
}
for kind in head r64k r4m; do
  case $kind in
    head) label="channel head"; path=/channels/stable/head; wscript=""; hdr="" ;;
    r64k) label="64 KiB ranges"; path=$APATH; wscript=$(lua 65536); hdr="Range: bytes=1048576-1114111" ;;
    r4m) label="4 MiB ranges"; path=$APATH; wscript=$(lua 4194304); hdr="Range: bytes=1048576-5242879" ;;
  esac
  for srv in ferry nginx; do
    say "$srv: $label"
    start_server "$srv"
    command -v wrk >/dev/null && timeout 30 wrk -t"$NP" -c"$CONNS" -d"$WARM"s ${wscript:+-s "$wscript"} "http://127.0.0.1:$H1$path" >/dev/null 2>&1 || true
    if command -v wrk >/dev/null; then
      timeout $(( DUR + 60 )) wrk -t"$NP" -c"$CONNS" -d"${DUR}s" --timeout 10s --latency ${wscript:+-s "$wscript"} "http://127.0.0.1:$H1$path" > "$WORK/wrk.txt" 2>&1 || true
      rec kind=server proto="HTTP/1.1 (wrk)" server="$srv" load="$label" $(parse_wrk "$WORK/wrk.txt")
    fi
    if command -v h2load >/dev/null; then
      timeout $(( DUR + 40 )) h2load -t"$NP" -c"$CONNS" -m1 -D "$DUR" -N 5 -T $(( DUR + 10 )) ${hdr:+-H "$hdr"} "http://127.0.0.1:$H2$path" > "$WORK/h2.txt" 2>&1 || true
      rec kind=server proto="HTTP/2 (h2load)" server="$srv" load="$label" $(parse_h2 "$WORK/h2.txt")
      grep -q "^finished in" "$WORK/h2.txt" || note "h2load against $srv ($label) printed no summary within $(( DUR + 40 )) s (killed by timeout): last line \"$(tail -1 "$WORK/h2.txt")\""
    fi
    rec kind=server proto="-" server="$srv" load="$label" peak_rss_kib="$(hwm_tree "$SRV_PID")"
    stop_pid "$SRV_PID"
  done
done
