#!/usr/bin/env bash
# Update bytes through diffs (issue 14), on every product of the data set (--quick: the
# esbuild pairs only). Each product's releases are published in order into one
# repository with publish's default settings; after each publish an agent holding an
# earlier release updates to the new one, from a loopback nginx (a static host) and
# from `ferry-server serve --diffs-on-demand`, and reports its requests and bytes (`ferry update --json`:
# every body it fetched — head, manifest or manifest diff, data):
# - consecutive pairs vs bsdiff 4.3 of the pair (the new release's file, or a tree as a
#   deterministic tar, against the old one) and, for the five pairs
#   ../shared/bench/PEERS.md measured, vs the smallest of its HDiffPatch, `zstd --ultra -22
#   --long=31 --patch-from` and Zucchini (Go-capable, xz) figures too (the issue's
#   reference; for the other pairs bsdiff is);
# - jumps of 3, 5 and 10 releases (esbuild-chain) and 2 (numpy 2.1.1 -> 2.1.3) vs the
#   direct bsdiff of the pair and `zstd -19 --long=31` of the new release.
# bsdiff patches and zstd sizes are cached in benches/.cache by content hash.
source "$(dirname "$0")/lib.sh"
NP=$(nproc)
REL="$DATA/releases"
if [ "$QUICK" = 1 ]; then SETS="esbuild"; else SETS="esbuild-chain numpy polars"; fi
PORT=$(free_port)
mkdir -p "$WORK/www" "$CACHE"
nginx_start diffs "$WORK/www" "$PORT" 1

# bsdiff input of a release: its single file, or its tree as a deterministic tar.
input() { # SET VERSION -> path
  local d="$REL/$1/$2" e
  e=$(find "$d" -mindepth 1 -maxdepth 1)
  if [ "$(echo "$e" | wc -l)" = 1 ] && [ -f "$e" ]; then echo "$e"; return; fi
  local t="$WORK/tar/$1-$2.tar"
  if [ ! -f "$t" ]; then
    mkdir -p "$WORK/tar"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -C "$d" -cf "$t" .
  fi
  echo "$t"
}
hkey() { sha256sum "$1" | cut -c1-16; }
# cached SIZE-PRODUCING-COMMAND: the size in bytes of a patch or frame, cached by key
cached() { # KEY CMD... (CMD writes $WORK/c.out)
  local key=$1; shift
  local f="$CACHE/size-$key"
  if [ ! -f "$f" ]; then
    "$@" >/dev/null 2>&1 || { echo ""; return; }
    stat -c %s "$WORK/c.out" > "$f.tmp" && mv "$f.tmp" "$f"; rm -f "$WORK/c.out"
  fi
  cat "$f"
}
bsdiff_size() { # OLD NEW
  local old=$1 new=$2 key; key="bsdiff-$(hkey "$old")-$(hkey "$new")"
  cached "$key" bsdiff "$old" "$new" "$WORK/c.out"
}
zlong_size() { # NEW
  local key; key="zstd19long31-$(hkey "$1")"
  cached "$key" zstd -q -f -19 --long=31 -T"$NP" "$1" -o "$WORK/c.out"
}
# PEERS.md (December 2026), for the pairs it measured: HDiffPatch (the smaller of its two
# builds), zstd --ultra -22 --long=31 --patch-from, Zucchini with the Go fix under xz -9e.
peer() { # SET FROM TO -> "hdiffpatch zstd-patch-from zucchini" or ""
  case "$1 $2 $3" in
    "esbuild"*" 0.24.0 0.24.1") echo "232742 529088 148976" ;;
    "esbuild"*" 0.24.1 0.24.2") echo "82953 204186 27312" ;;
    "numpy 2.1.1 2.1.2") echo "52953 148732 42748" ;;
    "numpy 2.1.2 2.1.3") echo "89855 264550 73480" ;;
    "polars 1.17.0 1.17.1") echo "4301974 4603904 4601176" ;;
  esac
}

# One update: the agent of ROOT (holding FROM) against URL; its json in $WORK/u.json.
try_update() { # ROOT URL
  rm -rf "$WORK/try"; cp -a "$1" "$WORK/try"
  sed -i "s|^servers = .*|servers = [\"$2\"]|" "$WORK/try/.ferry/config.toml"
  "$BIN/ferry" update --root "$WORK/try" --json --quiet > "$WORK/u.json"
}

cons_worst=0; cons_l=""; cons_n=0; cons_met=0; cons_f=0; cons_r=0
jump_worst=0; jump_l=""; jump_n=0; jump_f=0; jump_r=0; jump_met=0; jump_zworst=0; req_worst_s=0; req_worst_f=0
for set in $SETS; do
  repo="$WORK/www/$set"
  rm -rf "$repo" "$WORK/roots"; mkdir -p "$WORK/roots"
  mapfile -t vs < <(ls "$REL/$set" | sort -V)
  case $set in esbuild-chain) K="1 3 5 10" ;; numpy | esbuild) K="1 2" ;; *) K="1" ;; esac
  SPID=""
  for i in "${!vs[@]}"; do
    to=${vs[$i]}
    say "$set: publish $to"
    publish_m pub "$repo" "$to" "$REL/$set/$to"
    if [ -z "$SPID" ]; then
      SP=$(free_port)
      "$BIN/ferry-server" serve --repo "$repo" --listen "127.0.0.1:$SP" --diffs-on-demand >/dev/null 2>"$WORK/serve.err" & SPID=$!
      PIDS+=("$SPID"); wait_port "$SP"
    fi
    # The base for later jumps: an agent that installed this release.
    ferry_init "$WORK/roots/$i" "http://127.0.0.1:$PORT/$set"
    "$BIN/ferry" update --root "$WORK/roots/$i" --json --quiet > /dev/null
    new=$(input "$set" "$to")
    for k in $K; do
      j=$((i - k)); [ "$j" -ge 0 ] || continue
      from=${vs[$j]}
      old=$(input "$set" "$from")
      try_update "$WORK/roots/$j" "http://127.0.0.1:$PORT/$set"
      s_b=$(J "$WORK/u.json" bytes_downloaded); s_r=$(J "$WORK/u.json" requests); s_via=$(J "$WORK/u.json" via)
      try_update "$WORK/roots/$j" "http://127.0.0.1:$SP"
      f_b=$(J "$WORK/u.json" bytes_downloaded); f_r=$(J "$WORK/u.json" requests); f_via=$(J "$WORK/u.json" via)
      bs=$(bsdiff_size "$old" "$new")
      if [ -z "$bs" ]; then note "bsdiff $set $from -> $to failed"; continue; fi
      best=$(( f_b < s_b ? f_b : s_b ))
      if [ "$k" = 1 ]; then
        refs="bsdiff $bs"; low=$bs
        read -r hd pf zu <<< "$(peer "$set" "$from" "$to")"
        if [ -n "${hd:-}" ]; then
          refs="$refs; PEERS.md: HDiffPatch $hd, zstd -22 --patch-from $pf, Zucchini $zu"
          for p in "$hd" "$pf" "$zu"; do [ "$p" -lt "$low" ] && low=$p; done
        fi
        r=$(python3 -c "print(round($f_b / $low, 3))")
        rec kind=info what="update bytes, $set $from -> $to: ferry-server $f_b B in $f_r requests ($f_via), static host $s_b B in $s_r ($s_via) vs the smallest peer" \
          ferry="$f_b" ref="$low" unit=B ref_label="ratio $r; $refs"
        cons_n=$((cons_n + 1))
        python3 -c "import sys; sys.exit(0 if $r <= 0.9 else 1)" && cons_met=$((cons_met + 1))
        python3 -c "import sys; sys.exit(0 if $r > $cons_worst else 1)" && { cons_worst=$r; cons_l="$set $from -> $to"; cons_f=$f_b; cons_r=$low; }
        hd=""; pf=""; zu=""
      else
        z=$(zlong_size "$new")
        r=$(python3 -c "print(round($f_b / $bs, 3))"); rs=$(python3 -c "print(round($s_b / $bs, 3))")
        rz=$(python3 -c "print(round(max($f_b, $s_b) / $z, 3))")
        rec kind=info what="jump of $k, $set $from -> $to: ferry-server $f_b B in $f_r requests ($f_via), static host $s_b B in $s_r ($s_via) vs the direct bsdiff" \
          ferry="$f_b" ref="$bs" unit=B ref_label="ratio $r (static host $rs); zstd -19 --long=31 of $to: $z B"
        jump_n=$((jump_n + 1))
        python3 -c "import sys; sys.exit(0 if max($r, $rs) <= 1.15 and $rz <= 1.0 and $f_r <= 3 and $s_r <= 5 else 1)" && jump_met=$((jump_met + 1))
        python3 -c "import sys; sys.exit(0 if max($r, $rs) > $jump_worst else 1)" && { jump_worst=$(python3 -c "print(max($r, $rs))"); jump_l="$set $from -> $to"; jump_f=$(( f_b > s_b ? f_b : s_b )); jump_r=$bs; }
        python3 -c "import sys; sys.exit(0 if $rz > $jump_zworst else 1)" && jump_zworst=$rz
        [ "$f_r" -gt "$req_worst_f" ] && req_worst_f=$f_r
        [ "$s_r" -gt "$req_worst_s" ] && req_worst_s=$s_r
      fi
    done
  done
  stop_pid "$SPID"
done
rec what="update bytes of each consecutive pair (from ferry-server) vs bsdiff, or where PEERS.md has them the smallest of bsdiff, HDiffPatch, zstd --patch-from and Zucchini, worst of $cons_n ($cons_l); $cons_met of $cons_n within" \
  compare=size ratio="$cons_worst" ferry="$cons_f" ref="$cons_r" unit=B ref_label="that pair's smallest peer" op="<=" target=0.9 \
  detail="per pair in Other figures"
if [ "$jump_n" -gt 0 ]; then
  rec what="jumps of 2-10 releases vs the direct bsdiff of the pair, worst of $jump_n from either host ($jump_l); $jump_met of $jump_n within every bound (bytes ≤ 1.15x bsdiff and ≤ zstd -19 --long=31 of the new release, worst $jump_zworst; requests ≤ 3 from ferry-server, worst $req_worst_f; ≤ 5 from a static host, worst $req_worst_s)" \
    compare=size ratio="$jump_worst" ferry="$jump_f" ref="$jump_r" unit=B ref_label="that pair's direct bsdiff" op="<=" target=1.15 \
    detail="per jump in Other figures"
fi
