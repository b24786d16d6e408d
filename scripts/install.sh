#!/usr/bin/env bash
# Create .venv (if needed) and install featureserve with the given extras, torch pinned by constraints.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
spec="."
if [ -n "${1:-}" ]; then spec=".[$1]"; fi
# CPU machines: constraints/cpu.txt pins torch to the CPU build. The Docker image uses its own CUDA pin.
.venv/bin/python -m pip install --quiet --constraint "${FEATURESERVE_CONSTRAINTS:-constraints/cpu.txt}" -e "$spec"
