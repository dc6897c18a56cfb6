#!/usr/bin/env bash
# The largest real release and the polars pair (--quick: esbuild 0.24.0 -> 0.24.1),
# publish at its default zstd level (19), served by a loopback nginx:
# - publish FROM without diffs (--no-fresh; the channel is empty) vs `zstd -19 -T$(nproc)` of
#   the same file, then again with the defaults (the diff from nothing included), reported;
#   the chunk+hash stage (suite-tool chunk-stage: the FileChunker publish runs, one thread) vs FastCDC + blake3 alone
# - fresh install of FROM (through the diff from nothing) vs curl | zstd -d of that zstd
#   file, both + sync
# - publish TO (with its diff), then the whole `ferry update` FROM -> TO vs `bspatch` +
#   sync of its output, medians of 5 alternating runs each (the bsdiff patch is made
#   once and cached in benches/.cache);
#   the in-process kernel (diff-eval --apply-object on the diff object publish wrote)
#   reported on its own, labelled
source "$(dirname "$0")/lib.sh"
NP=$(nproc)
if [ "$QUICK" = 1 ]; then PROD=esbuild; FROM=0.24.0; TO=0.24.1; FILE=esbuild
else PROD=polars; FROM=1.17.0; TO=1.17.1; FILE=polars.abi3.so; fi
OLD="$DATA/releases/$PROD/$FROM/$FILE"; NEW="$DATA/releases/$PROD/$TO/$FILE"
[ -f "$OLD" ] && [ -f "$NEW" ] || { note "missing $OLD or $NEW: run bash ../shared/bench/fetch-data.sh --chain $DATA"; exit 1; }
SZ=$(stat -c %s "$OLD")
PORT=$(free_port)
mkdir -p "$WORK/www"
nginx_start real "$WORK/www" "$PORT" 1
cat "$OLD" "$NEW" > /dev/null

say "publish $PROD $FROM"
# Without diffs (--no-fresh: no diff from nothing either) into a scratch repository:
# the publish target. Then with the defaults into the served one, the diff from
# nothing included (FORMAT.md §3.9), which the fresh install below takes.
publish_m pub "$WORK/scratch" "$FROM" "$DATA/releases/$PROD/$FROM" --no-fresh
rm -rf "$WORK/scratch"
publish_m pubf "$WORK/www/repo" "$FROM" "$DATA/releases/$PROD/$FROM"
fr_size=$(python3 -c 'import json,sys; f=json.load(open(sys.argv[1])).get("fresh"); print(f["size"] + f["manifest_diff_size"] if f else 0)' "$WORK/pubf.pub.json")
fr_secs=$(python3 -c 'import json,sys; f=json.load(open(sys.argv[1])).get("fresh"); print(round(f["seconds"], 1) if f else 0)' "$WORK/pubf.pub.json")
rec kind=info what="publish with the defaults (diff from nothing at level 21 included), $PROD $FROM: whole command; making the diff from nothing" \
  ferry="$(F pubf wall_s)" unit=s ref="$fr_secs" ref_label="the diff from nothing and its manifest diff: $fr_size B (archive $(J "$WORK/pubf.pub.json" archive_size) B); publish peak RSS $(( $(F pubf maxrss_kib) / 1024 )) MiB (the level's match tables)"
M zstd zstd -q -f -19 -T"$NP" "$OLD" -o "$WORK/www/old.zst"
stage=$("$BIN/suite-tool" chunk-stage "$OLD")
st_f=$(echo "$stage" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ferry_stage_s"])')
st_r=$(echo "$stage" | python3 -c 'import json,sys; print(json.load(sys.stdin)["fastcdc_blake3_s"])')
rec what="publish without diffs (--no-fresh), $PROD $FROM ($(mib "$SZ") MiB, default level 19): whole command vs zstd -19 -T$NP" compare=speed \
  ferry="$(F pub wall_s)" ref="$(F zstd wall_s)" unit=s ref_label="zstd -19 -T$NP" op=">=" target=0.8 \
  detail="CPU $(F pub cpu_pct)% (zstd $(F zstd cpu_pct)%), peak RSS $(( $(F pub maxrss_kib) / 1024 )) MiB; archive $(mib "$(J "$WORK/pub.pub.json" archive_size)") MiB, zstd $(mib "$(stat -c %s "$WORK/www/old.zst")") MiB"
rec what="publish chunk+hash stage, $PROD $FROM: ferry's path vs FastCDC+blake3 alone" compare=speed \
  ferry="$st_f" ref="$st_r" unit=s ref_label="FastCDC v2020 over mmap + blake3 per chunk" op=">=" target=0.8 \
  detail="suite-tool chunk-stage runs the FileChunker publish runs: read into a 1 MiB buffer, two-lane FastCDC v2020 cut, blake3 of each chunk and of the whole file in one pass, one thread; each side the fastest of 3 or more alternating rounds (up to 3 s)"

say "fresh install of $FROM"
fresh_rounds inst "$WORK/root" "http://127.0.0.1:$PORT/repo" \
  "curl -sf http://127.0.0.1:$PORT/old.zst | zstd -q -d -o '$WORK/out' && sync" 3
rec what="fresh install over loopback nginx, $PROD $FROM: ferry update + sync vs curl | zstd -d (zstd -19 file) + sync" compare=speed \
  ferry="$FR_F" ref="$FR_R" unit=s ref_label="curl | zstd -d -o FILE; sync" op=">=" target=0.8 \
  detail="$FR_RUNS; downloaded $(mib "$(J "$WORK/inst.upd.json" bytes_downloaded)") MiB, RssAnon peak $(( $(F inst rss_anon_peak_kib) / 1024 )) MiB"

say "publish $TO (with its diff)"
# --no-fresh: the agent holds FROM, so a diff from nothing would never be taken.
publish_m pub2 "$WORK/www/repo" "$TO" "$DATA/releases/$PROD/$TO" --no-fresh
# One update is a fraction of a second on a shared machine: each side is timed
# ROUNDS times, alternating, and the medians compared (ferry from a fresh copy of
# the root on FROM each round).
ROUNDS=5
cp -a "$WORK/root" "$WORK/root-from"
sync
update_m upd "$WORK/root"
t0=$(now); sync; t1=$(now); u_runs=($(python3 -c "print(round($(F upd wall_s) + $(delta "$t0" "$t1"), 4))"))
cmp -s "$WORK/root/current/$FILE" "$NEW" || note "update $FROM -> $TO: installed file differs"

# bspatch reference: the patch is cached (bsdiff of polars takes minutes)
key=$(printf '%s\n' "$(sha256sum "$OLD" | cut -c1-16)" "$(sha256sum "$NEW" | cut -c1-16)" | tr -d '\n')
PATCH="$CACHE/bsdiff-$PROD-$FROM-$TO-$key.patch"
if [ ! -f "$PATCH" ] && command -v bsdiff >/dev/null; then
  say "bsdiff $PROD $FROM $TO (once; cached in benches/.cache)"
  bsdiff "$OLD" "$NEW" "$PATCH.tmp" && mv "$PATCH.tmp" "$PATCH"
fi
if [ -f "$PATCH" ] && command -v bspatch >/dev/null; then
  b_runs=()
  for r in $(seq "$ROUNDS"); do
    M bspatch bash -c "bspatch '$OLD' '$WORK/bsout' '$PATCH' && sync"
    b_runs+=("$(F bspatch wall_s)")
    cmp -s "$WORK/bsout" "$NEW" || note "bspatch output differs from $TO"
    rm -f "$WORK/bsout"
    [ "$r" = "$ROUNDS" ] && break
    rm -rf "$WORK/root-r"; cp -a "$WORK/root-from" "$WORK/root-r"; sync
    update_m updr "$WORK/root-r"
    t0=$(now); sync; t1=$(now); u_runs+=("$(python3 -c "print(round($(F updr wall_s) + $(delta "$t0" "$t1"), 4))")")
  done
  rm -rf "$WORK/root-r" "$WORK/root-from"
  u_s=$(median "${u_runs[@]}"); b_s=$(median "${b_runs[@]}")
  dl=$(J "$WORK/upd.upd.json" bytes_downloaded)
  rec what="apply a diff end to end, $PROD $FROM -> $TO: whole ferry update over loopback nginx + sync vs bspatch + sync (stretch 5x)" compare=speed \
    ferry="$u_s" ref="$b_s" unit=s ref_label="bspatch OLD OUT PATCH; sync" op=">=" target=3 \
    detail="medians of $ROUNDS alternating runs each (ferry ${u_runs[*]} s; bspatch ${b_runs[*]} s); ferry downloaded $(mib "$dl") MiB in $(J "$WORK/upd.upd.json" requests) requests; bsdiff patch $(mib "$(stat -c %s "$PATCH")") MiB"
else
  note "bsdiff/bspatch missing: the diff target is not measured"
fi
# the kernel alone: the diff object publish wrote, applied in process by diff-eval
# (not the diff from nothing FROM's publish wrote, whose base is the empty release)
obj=$(python3 - "$WORK/www/repo/objects" "$WORK/pubf.pub.json" <<'PY'
import json, os, sys
fresh = (json.load(open(sys.argv[2])).get("fresh") or {}).get("object", "")
for d, _, fs in os.walk(sys.argv[1]):
    for f in fs:
        p = os.path.join(d, f)
        if fresh and fresh in f:
            continue
        with open(p, "rb") as h:
            if h.read(4) == b"FRYD":
                print(p); sys.exit(0)
PY
)
if [ -n "$obj" ]; then
  "$BIN/diff-eval" --apply-object "$OLD" "$obj" > "$WORK/kernel.txt" 2>&1 || true; rm -f "$obj.out"
  k=$(python3 -c 'import re,sys; m=re.search(r"applied (\d+) B in ([\d.]+) s .*fsync ([\d.]+) s", open(sys.argv[1]).read()); print(f"{m.group(2)} {m.group(3)} {m.group(1)}" if m else "")' "$WORK/kernel.txt")
  if [ -n "$k" ]; then
    set -- $k
    rec kind=info what="diff apply kernel in process ($PROD $FROM -> $TO, diff object $(mib "$(stat -c %s "$obj")") MiB; produces the missing chunks only): apply, then fsync" \
      ferry="$1" unit=s ref="$2" ref_label="fsync of its output (not compared: the whole command is the row above)"
  else note "diff-eval --apply-object failed: $(tail -1 "$WORK/kernel.txt")"; fi
else
  note "no diff object in the repository: the kernel figure is missing"
fi
