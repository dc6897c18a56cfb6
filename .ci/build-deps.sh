#!/usr/bin/env bash
# Installs the Debian packages building ferry needs: libclang-dev, for bindgen in the
# bundled bzip3 build (diff streams). Flags add what the end-to-end tests use:
# --nginx (a real static host), --prometheus (promtool, which checks /metrics),
# --chromium (chromium and chromium-driver, which drive the fleet page), --man (groff,
# which renders the generated manual pages), --tmux (a real terminal for the progress
# display), --postgres (Debian's PostgreSQL server; the fleet tests start private
# instances of it, so the packaged cluster service is not needed). Does nothing when
# they are already there.
set -euo pipefail
want=()
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
    *) echo "build-deps.sh: unknown flag $flag (--nginx, --prometheus, --chromium, --man, --tmux, --postgres)" >&2; exit 2 ;;
  esac
done
[ ${#want[@]} -eq 0 ] && exit 0
echo "--- installing ${want[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
# No recommends: prometheus would otherwise pull a node exporter and a web UI.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
