#!/usr/bin/env bash
# Installs the Debian packages building ferry needs: libclang-dev, for bindgen in the
# bundled bzip3 build (diff streams). With --nginx, also nginx, for the end-to-end
# tests against a real static host. Does nothing when they are already there.
set -euo pipefail
want=()
ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so ' || want+=(libclang-dev)
if [ "${1:-}" = "--nginx" ] && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  want+=(nginx)
fi
[ ${#want[@]} -eq 0 ] && exit 0
echo "--- installing ${want[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${want[@]}" >/dev/null
