#!/usr/bin/env bash
# Debian packages the test suite drives for real: coturn (TURN relay tests),
# Chromium (browser tests), Redis and Postgres servers (fault tests). Installed
# only when missing; needs root (CI is).
set -euo pipefail

missing=()
command -v turnserver >/dev/null || missing+=(coturn)
command -v chromium >/dev/null || missing+=(chromium)
# The fault tests (tests/reliability/test_faults.py) start a Redis and a Postgres of their own.
command -v redis-server >/dev/null || missing+=(redis-server)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
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
