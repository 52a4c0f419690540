#!/usr/bin/env bash
# Installs the Debian packages a step needs when they are missing. A fresh machine has the Rust
# toolchain, gcc and python3, but not cmake (pingora's zlib-ng build), nor what the tests drive:
# Chromium (the dashboard test), Prometheus with promtool and systemd-analyze (the monitoring
# test: alert rules, scrapes and the shipped units), and g++ (libFuzzer, which the fuzz smoke run
# builds).
#   scripts/ensure-deps.sh          what the build needs (`make up`)
#   scripts/ensure-deps.sh --test   and what the tests need (`make test`)
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing missing system packages: ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
