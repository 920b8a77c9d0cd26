#!/usr/bin/env bash
# Debian packages only the benchmarks need (never the test suite): Janus
# 1.1.x, the reference SFU that `make bench-janus` compares Huddle against
# (bench/sfu/janus.py). Installed only when missing; needs root.
set -euo pipefail

if command -v janus >/dev/null; then
  # `janus --version` exits 1 after printing the version.
  version="$( (janus --version 2>/dev/null || true) | sed -n 's/^Janus version: [0-9]* (\(.*\))$/\1/p')"
  case "$version" in
    1.1.*) exit 0 ;;
    *) echo "install-bench-deps: janus $version installed; the benchmark expects 1.1.x" >&2; exit 0 ;;
  esac
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-bench-deps: janus missing; run as root: apt-get install -y janus" >&2
  exit 1
fi
echo "install-bench-deps: installing janus"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends janus
# Debian's package may start a system service on some images; the benchmark
# runs its own instance from its own configuration.
if command -v systemctl >/dev/null; then systemctl disable --now janus 2>/dev/null || true; fi
