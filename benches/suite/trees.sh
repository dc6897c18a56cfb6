#!/usr/bin/env bash
# Generated trees of small files (1k, 10k, 100k files of ~2 KiB; --quick: 1k, 10k),
# zstd level 3 (the diff from nothing too, --fresh-level 3): publish, fresh install
# (through that diff) over a loopback nginx and fresh install from
# `ferry-server serve` (cost curves); on the largest tree, publish and install each vs
# `tar c | tar x` of the same tree, all ending with one `sync`.
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then COUNTS="1000 10000"; else COUNTS="1000 10000 100000"; fi
LARGEST=${COUNTS##* }
PORT=$(free_port)
mkdir -p "$WORK/www"
nginx_start trees "$WORK/www" "$PORT" 1
for N in $COUNTS; do
  say "== $N files"
  rm -rf "$WORK/src" "$WORK/www/repo" "$WORK/root" "$WORK/tarcopy"
  "$BIN/suite-tool" gen --out "$WORK/src" --bytes $(( N * 2048 )) --files "$N" --seed 21
  sync
  t0=$(now); publish_m pub "$WORK/www/repo" 1.0.0 "$WORK/src" --zstd-level 3 --fresh-level 3; sync; t1=$(now); p_s=$(delta "$t0" "$t1")
  rec kind=curve op=publish axis=files x="$N" seconds="$p_s" peak_kib="$(F pub maxrss_kib)"
  ferry_init "$WORK/root" "http://127.0.0.1:$PORT/repo"
  t0=$(now); update_m inst "$WORK/root"; sync; t1=$(now); i_s=$(delta "$t0" "$t1")
  rec kind=curve op=update axis=files x="$N" seconds="$i_s" peak_kib="$(F inst maxrss_kib)"
  diff -r "$WORK/root/current" "$WORK/src" >/dev/null || note "$N files: installed tree differs"
  SP=$(free_port)
  "$BIN/ferry-server" serve --repo "$WORK/www/repo" --listen "127.0.0.1:$SP" >/dev/null 2>"$WORK/serve.err" & SPID=$!
  PIDS+=("$SPID"); wait_port "$SP"
  ferry_init "$WORK/root2" "http://127.0.0.1:$SP"
  update_m viaserve "$WORK/root2"
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$SPID/status")
  stop_pid "$SPID"; rm -rf "$WORK/root2"
  rec kind=curve op=serve axis=files x="$N" seconds="$(F viaserve wall_s)" peak_kib="$hwm"
  if [ "$N" = "$LARGEST" ]; then
    sync
    mkdir -p "$WORK/tarcopy"
    t0=$(now); tar -C "$WORK/src" -cf - . | tar -C "$WORK/tarcopy" -xf -; sync; t1=$(now); tar_s=$(delta "$t0" "$t1")
    rec what="publish of a tree of $N small files (~2 KiB, zstd 3) + sync vs tar c | tar x + sync" compare=speed \
      ferry="$p_s" ref="$tar_s" unit=s ref_label="tar c | tar x; sync" op=">=" target=0.5 \
      detail="peak RSS $(( $(F pub maxrss_kib) / 1024 )) MiB"
    rec what="fresh install (update) of the same tree over loopback nginx + sync vs tar c | tar x + sync" compare=speed \
      ferry="$i_s" ref="$tar_s" unit=s ref_label="tar c | tar x; sync" op=">=" target=0.5 \
      detail="$(J "$WORK/inst.upd.json" requests) requests, peak RSS $(( $(F inst maxrss_kib) / 1024 )) MiB"
  fi
done
rm -rf "$WORK/src" "$WORK/www/repo" "$WORK/root" "$WORK/tarcopy"
