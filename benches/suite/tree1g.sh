#!/usr/bin/env bash
# A generated 1 GiB tree of 1,000 files (--quick: 100 MB), published at zstd level 3
# with --diff-depth 0 and --no-fresh (nothing here installs fresh but M's first
# install, which is not measured), served by a loopback nginx:
# - unchanged files cost nothing: update A -> B where 1% of the files changed; the bytes
#   the agent writes (/proc/PID/io write_bytes at exit, via wait4) minus what it downloads
#   (the range files it spools) vs the changed files' bytes; `du` of the root holding
#   A and B vs `du` of one tree
# - everything local: `rollback --to` a release M that was never installed and whose
#   chunks all sit in A and B (only its manifest is fetched); repair of B after 1% of
#   its files were damaged (appended to); each vs `cp -r` of the same tree + sync
source "$(dirname "$0")/lib.sh"
if [ "$QUICK" = 1 ]; then BYTES=100000000; else BYTES=1073741824; fi
L=$(python3 -c "s=$BYTES; print(f'{s/2**30:.0f} GiB' if s >= 2**30 else f'{s/1e6:.0f} MB')")
PORT=$(free_port)
mkdir -p "$WORK/www"
nginx_start tree "$WORK/www" "$PORT" 1
URL="http://127.0.0.1:$PORT/repo"

say "generating A ($L, 1,000 files), B (1% changed) and M (A with half of B's changes)"
"$BIN/suite-tool" gen --out "$WORK/A" --bytes "$BYTES" --files 1000 --seed 11
cp -al "$WORK/A" "$WORK/B"
"$BIN/suite-tool" mutate --dir "$WORK/B" --every 100 --seed 12 > "$WORK/changed.txt" 2> "$WORK/changed.bytes"
changed=$(cat "$WORK/changed.bytes"); nchanged=$(wc -l < "$WORK/changed.txt")
cp -al "$WORK/A" "$WORK/M"
head -n $(( nchanged / 2 )) "$WORK/changed.txt" | while read -r p; do rm "$WORK/M/$p"; cp "$WORK/B/$p" "$WORK/M/$p"; done

publish_m pubM "$WORK/www/repo" 1.0.0 "$WORK/M" --zstd-level 3 --diff-depth 0 --no-fresh
publish_m pubA "$WORK/www/repo" 1.1.0 "$WORK/A" --zstd-level 3 --diff-depth 0 --no-fresh
ferry_init "$WORK/root" "$URL"
update_m instA "$WORK/root"
publish_m pubB "$WORK/www/repo" 1.2.0 "$WORK/B" --zstd-level 3 --diff-depth 0 --no-fresh
sync
update_m updB "$WORK/root"
diff -r "$WORK/root/current" "$WORK/B" >/dev/null || note "update to B: installed tree differs from B"
wb=$(F updB write_bytes); dl=$(J "$WORK/updB.upd.json" bytes_downloaded)
net=$(( wb - dl ))
rec what="update of a $L tree with 1% of files changed ($nchanged files): bytes written minus bytes downloaded vs changed files' bytes" \
  compare=size ferry="$net" ref="$changed" unit=B ref_label="changed files" op="<=" target=1.2 \
  detail="write_bytes $(mib "$wb") MiB, downloaded (spooled range files) $(mib "$dl") MiB, $(J "$WORK/updB.upd.json" requests) requests, $(F updB wall_s) s"
sync
one=$(du -sk "$WORK/B" | cut -f1)
# du counts hard-linked files once; the root holds A and B
two=$(du -sk "$WORK/root/versions" | cut -f1)
rec what="du of the root with 2 retained releases (A, B) vs du of one tree" compare=size ferry="$two" ref="$one" unit=KiB \
  ref_label="du of B" op="<=" target=1.05

# the reference for local work: cp -r of the same tree, then sync
sync
t0=$(now); cp -r "$WORK/B" "$WORK/cp-copy"; sync; t1=$(now); cp_s=$(delta "$t0" "$t1")
rm -rf "$WORK/cp-copy"; sync

# repair: 1% of the active files damaged (appended to: a size check finds them)
head -n "$nchanged" <(cd "$WORK/root/current" && find . -type f -name '*.dat' | sort | awk 'NR % 97 == 5') > "$WORK/damaged.txt"
while read -r p; do printf 'damage' >> "$WORK/root/current/$p"; done < "$WORK/damaged.txt"
sync
t0=$(now); update_m repair "$WORK/root"; sync; t1=$(now); rep_s=$(delta "$t0" "$t1")
diff -r "$WORK/root/current" "$WORK/B" >/dev/null || note "repair: installed tree differs from B"
rec what="repair of the active $L tree ($(wc -l < "$WORK/damaged.txt") damaged files): ferry update + sync vs cp -r + sync" compare=speed \
  ferry="$rep_s" ref="$cp_s" unit=s ref_label="cp -r TREE COPY; sync" op=">=" target=0.5 \
  detail="downloaded $(mib "$(J "$WORK/repair.upd.json" bytes_downloaded)") MiB, reused $(mib "$(J "$WORK/repair.upd.json" bytes_reused)") MiB"

# rollback --to M: never installed, its chunks all in A and B
sync
t0=$(now)
MO rollback "$WORK/rollback.json" "$BIN/ferry" rollback --root "$WORK/root" --to 1.0.0 --json
sync; t1=$(now); rb_s=$(delta "$t0" "$t1")
diff -r "$WORK/root/current" "$WORK/M" >/dev/null || note "rollback --to 1.0.0: installed tree differs from M"
rec what="rollback --to a $L release built from retained chunks: ferry rollback + sync vs cp -r + sync" compare=speed \
  ferry="$rb_s" ref="$cp_s" unit=s ref_label="cp -r TREE COPY; sync" op=">=" target=0.5 \
  detail="$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(", ".join(f"{k} {d[k]}" for k in ("bytes_downloaded","requests") if k in d))' "$WORK/rollback.json" 2>/dev/null || true)"
