#!/usr/bin/env bash
# Installs Debian packages the test suite needs (e.g. prometheus, for promtool and a real
# Prometheus server; podman, runc and debootstrap, for the images) when they are missing.
# Quiet when everything is present.
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (install them, or run as root)" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The prometheus package's service is not wanted: tests start their own Prometheus.
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
  if [ -d /run/systemd/system ]; then systemctl disable --now prometheus 2>/dev/null || true; fi
  pkill -x prometheus 2>/dev/null || true
fi
