#!/usr/bin/env bash
# Create .venv (if needed) and install featureserve with the given extras, torch pinned by constraints.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
spec="."
if [ -n "${1:-}" ]; then spec=".[$1]"; fi
# Every package at the version of constraints/lock.txt (python3 scripts/lock.py writes it), torch the CPU build.
.venv/bin/python -m pip install --quiet --constraint "${FEATURESERVE_CONSTRAINTS:-constraints/lock.txt}" -e "$spec"
# The web page's browser test (tests/client/test_web_page.py) drives Debian's Chromium through playwright
# (playwright's own browser download cannot work on a closed network). Install the package when the test
# extra is asked for, it is missing, and we can (root with apt-get); otherwise that test skips and says why.
if [[ ",${1:-}," == *",test,"* ]] && ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "install.sh: installing Debian's chromium for the browser test" >&2
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    echo "install.sh: chromium could not be installed; the browser test will be skipped" >&2
  fi
fi
