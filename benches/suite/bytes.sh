#!/usr/bin/env bash
# Bytes of a fresh install, on every release of the data set (--quick: esbuild
# 0.24.0-0.24.2): each product's releases are published in order into one repository
# (the defaults: archive at level 19 and the diff from nothing at level 21, FORMAT.md
# §3.9, which a fresh install takes; --diff-depth 0, as no agent holds a release) and
# installed fresh from a loopback nginx after each publish; ferry's bytes_downloaded
# (head, manifest diff, diff object) vs the size of
# `zstd -19 --long=31` of the release (a tree as a deterministic tar), cached in
# benches/.cache/zstd19long.json by content hash.
source "$(dirname "$0")/lib.sh"
NP=$(nproc)
REL="$DATA/releases"
if [ "$QUICK" = 1 ]; then SETS="esbuild"; else SETS="esbuild-chain numpy polars"; fi
PORT=$(free_port)
mkdir -p "$WORK/www"
nginx_start bytes "$WORK/www" "$PORT" 1
ZC="$CACHE/zstd19long.json"; [ -f "$ZC" ] || echo '{}' > "$ZC"
zsize() { # PATH (file or tree) -> bytes of zstd -19 --long=31, cached
  local src=$1 in key
  if [ -f "$src" ]; then in=$src; else
    in="$WORK/tree.tar"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -C "$src" -cf "$in" .
  fi
  key=$(sha256sum "$in" | cut -c1-32)
  local v; v=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$ZC" "$key")
  if [ -z "$v" ]; then
    zstd -q -f -19 --long=31 -T"$NP" "$in" -o "$WORK/z.zst"
    v=$(stat -c %s "$WORK/z.zst"); rm -f "$WORK/z.zst"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d[sys.argv[2]]=int(sys.argv[3]); json.dump(d, open(sys.argv[1], "w"), indent=1)' "$ZC" "$key" "$v"
  fi
  rm -f "$WORK/tree.tar"
  echo "$v"
}
worst=0; worst_l=""; n=0; met=0; tot_f=0; tot_z=0
for set in $SETS; do
  rm -rf "$WORK/www/repo"
  for v in $(ls "$REL/$set" | sort -V); do
    src="$REL/$set/$v"
    e=$(find "$src" -mindepth 1 -maxdepth 1); [ "$(echo "$e" | wc -l)" = 1 ] && [ -f "$e" ] && single=$e || single=""
    say "$set $v"
    publish_m "pub" "$WORK/www/repo" "$v" "$src" --diff-depth 0
    ferry_init "$WORK/root" "http://127.0.0.1:$PORT/repo"
    update_m inst "$WORK/root"
    f=$(J "$WORK/inst.upd.json" bytes_downloaded)
    z=$(zsize "${single:-$src}")
    rm -rf "$WORK/root"
    r=$(python3 -c "print(round($f / $z, 3))")
    rec kind=info what="fresh install bytes, $set $v: ferry bytes_downloaded vs zstd -19 --long=31" ferry="$f" ref="$z" unit=B ref_label="ratio $r"
    n=$((n + 1)); tot_f=$((tot_f + f)); tot_z=$((tot_z + z))
    python3 -c "import sys; sys.exit(0 if $f <= $z else 1)" && met=$((met + 1))
    if python3 -c "import sys; sys.exit(0 if $r > ${worst} else 1)"; then worst=$r; worst_l="$set $v"; fi
  done
done
rec what="fresh install bytes vs zstd -19 --long=31 of the release, worst of $n releases ($worst_l); $met of $n within" compare=size \
  ratio="$worst" ferry="$tot_f" ref="$tot_z" unit=B ref_label="all releases: zstd -19 --long=31" op="<=" target=1.0 \
  detail="ferry and zstd columns are totals over the $n releases; per release in Other figures"
