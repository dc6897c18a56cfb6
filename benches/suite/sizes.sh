#!/usr/bin/env bash
# Generated single-file releases at three sizes (100 MB, 1 GiB, 4 GiB; --quick: 20 MB,
# 100 MB), published at zstd level 3 (generated data; real releases use the default 19):
# - publish (a ratio at every size): whole command vs `zstd -3 -T$(nproc)` over the same file; the chunk+hash stage
#   (suite-tool chunk-stage: the FileChunker publish runs, one thread) vs FastCDC + blake3 alone; CPU use; peak RSS
# - publish without diffs (--no-fresh) for these rows; fresh install over a loopback nginx
#   vs `curl URL | zstd -d -o FILE` of the same file compressed by zstd -3, both followed
#   by one `sync`; the agent's peak RssAnon; below 2 GiB again through the diff from
#   nothing (published into a second repository with --fresh-level 3)
# - fresh install from `ferry-server serve`: the server's peak RSS (VmHWM)
# Every size is also a point of the cost curves.
source "$(dirname "$0")/lib.sh"
NP=$(nproc)
if [ "$QUICK" = 1 ]; then SIZES="20000000 100000000"; else SIZES="100000000 1073741824 4294967296"; fi
PORT=$(free_port)
mkdir -p "$WORK/www"
nginx_start sizes "$WORK/www" "$PORT" 1

for S in $SIZES; do
  L=$(python3 -c "s=$S; print(f'{s/2**30:.0f} GiB' if s >= 2**30 else f'{s/1e6:.0f} MB')")
  say "== $L"
  rm -rf "$WORK/src" "$WORK/www/"* "$WORK/root" "$WORK/out"
  mkdir -p "$WORK/src"
  "$BIN/suite-tool" gen --out "$WORK/src" --bytes "$S" --files 1 --seed 7
  f="$WORK/src/blob.bin"
  cat "$f" > /dev/null   # in the page cache for both sides

  # publish vs zstd
  publish_m pub "$WORK/www/repo" 1.0.0 "$WORK/src" --zstd-level 3 --no-fresh
  M zstd zstd -q -f -3 -T"$NP" "$f" -o "$WORK/www/blob.zst"
  stage=$("$BIN/suite-tool" chunk-stage "$f")
  p_s=$(F pub wall_s); z_s=$(F zstd wall_s); p_cpu=$(F pub cpu_pct); p_rss=$(F pub maxrss_kib)
  man=$(J "$WORK/pub.pub.json" manifest_size); arch=$(J "$WORK/pub.pub.json" archive_size)
  st_f=$(echo "$stage" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ferry_stage_s"])')
  st_r=$(echo "$stage" | python3 -c 'import json,sys; print(json.load(sys.stdin)["fastcdc_blake3_s"])')
  rec kind=info what="publish $L: peak RSS" ferry="$p_rss" unit=KiB
  rec kind=info what="publish $L: CPU use (200% = 2 cores busy)" ferry="$p_cpu" unit=% ref="$(F zstd cpu_pct)" ref_label="zstd -3 -T$NP"
  rec kind=curve op=publish axis=bytes x="$S" seconds="$p_s" peak_kib="$p_rss"
  rec what="publish without diffs, generated $L (zstd 3): whole command vs zstd -3 -T$NP" compare=speed \
    ferry="$p_s" ref="$z_s" unit=s ref_label="zstd -3 -T$NP" op=">=" target=0.8 \
    detail="archive $(mib "$arch") MiB, zstd $(mib "$(stat -c %s "$WORK/www/blob.zst")") MiB"
  rec what="publish chunk+hash stage, generated $L: ferry's path vs FastCDC+blake3 alone" compare=speed \
    ferry="$st_f" ref="$st_r" unit=s ref_label="FastCDC v2020 over mmap + blake3 per chunk" op=">=" target=0.8 \
    detail="suite-tool chunk-stage runs the FileChunker publish runs (publish does not time its stages): read into a 1 MiB buffer, two-lane FastCDC v2020 cut, blake3 of each chunk and of the whole file in one pass, one thread; each side the fastest of 3 or more alternating rounds (up to 3 s)"

  # fresh install over nginx vs curl | zstd -d
  rounds=3; [ "$S" -ge 4294967296 ] && rounds=1; [ "$S" -lt 1073741824 ] && rounds=5
  ref_cmd="curl -sf http://127.0.0.1:$PORT/blob.zst | zstd -q -d -o '$WORK/out' && sync"
  fresh_rounds inst "$WORK/root" "http://127.0.0.1:$PORT/repo" "$ref_cmd" "$rounds"
  i_s=$FR_F; i_r=$FR_R; i_runs=$FR_RUNS
  cmp -s "$WORK/root/current/blob.bin" "$f" || note "install $L: installed file differs"
  anon=$(F inst rss_anon_peak_kib)
  rec kind=curve op=update axis=bytes x="$S" seconds="$i_s" peak_kib="$(F inst maxrss_kib)"
  lim=$(( 65536 + man / 1024 ))
  rec what="client RssAnon peak, fresh install of $L (limit 64 MiB + manifest $(mib "$man") MiB)" compare=size \
    ferry="$anon" ref="$lim" unit=KiB ref_label="64 MiB + manifest" op="<=" target=1.0
  rec what="fresh install over loopback nginx, generated $L: ferry update + sync vs curl | zstd -d + sync" compare=speed \
    ferry="$i_s" ref="$i_r" unit=s ref_label="curl | zstd -d -o FILE; sync" op=">=" target=0.8 \
    detail="$i_runs; downloaded $(mib "$(J "$WORK/inst.upd.json" bytes_downloaded)") MiB in $(J "$WORK/inst.upd.json" requests) requests"

  # fresh install through the diff from nothing (FORMAT.md §3.9; level 3 here too),
  # below the 2 GiB diff bound
  if [ "$S" -lt 2147483648 ]; then
    rm -rf "$WORK/www/repo-f" "$WORK/root"
    publish_m pubf "$WORK/www/repo-f" 1.0.0 "$WORK/src" --zstd-level 3 --fresh-level 3
    fresh_rounds instf "$WORK/root" "http://127.0.0.1:$PORT/repo-f" "$ref_cmd" "$rounds"
    cmp -s "$WORK/root/current/blob.bin" "$f" || note "install $L from nothing: installed file differs"
    rec what="client RssAnon peak, fresh install of $L through the diff from nothing (limit 64 MiB + manifest $(mib "$man") MiB)" compare=size \
      ferry="$(F instf rss_anon_peak_kib)" ref="$lim" unit=KiB ref_label="64 MiB + manifest" op="<=" target=1.0
    rec what="fresh install over loopback nginx through the diff from nothing, generated $L: ferry update + sync vs curl | zstd -d + sync" compare=speed \
      ferry="$FR_F" ref="$FR_R" unit=s ref_label="curl | zstd -d -o FILE; sync" op=">=" target=0.8 \
      detail="$FR_RUNS; downloaded $(mib "$(J "$WORK/instf.upd.json" bytes_downloaded)") MiB in $(J "$WORK/instf.upd.json" requests) requests; publish $(F pubf wall_s) s with it"
    rm -rf "$WORK/www/repo-f"
    ferry_init "$WORK/root" "http://127.0.0.1:$PORT/repo"
  fi

  # fresh install from ferry-server serve: the server's peak memory
  SP=$(free_port)
  "$BIN/ferry-server" serve --repo "$WORK/www/repo" --listen "127.0.0.1:$SP" >/dev/null 2>"$WORK/serve.err" & SPID=$!
  PIDS+=("$SPID"); wait_port "$SP"
  ferry_init "$WORK/root" "http://127.0.0.1:$SP"
  update_m viaserve "$WORK/root"
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$SPID/status")
  stop_pid "$SPID"
  rec kind=info what="ferry-server serve peak RSS during a $L fresh install" ferry="$hwm" unit=KiB
  rec kind=curve op=serve axis=bytes x="$S" seconds="$(F viaserve wall_s)" peak_kib="$hwm"
  rm -rf "$WORK/root" "$WORK/www/"* "$WORK/src"
done
