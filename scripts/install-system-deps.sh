#!/usr/bin/env bash
# Debian packages the test suite drives for real: coturn (TURN relay tests) and
# Chromium (browser tests). Installed only when missing; needs root (CI is).
set -euo pipefail

missing=()
command -v turnserver >/dev/null || missing+=(coturn)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: missing ${missing[*]}; run as root: apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# coturn's package starts a system service on some images; tests run their own.
if command -v systemctl >/dev/null; then systemctl disable --now coturn 2>/dev/null || true; fi
