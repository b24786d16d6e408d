#!/usr/bin/env bash
# Download every wheel the image installs into DIR (default wheelhouse/), at the versions of
# constraints/lock.txt, so that `docker build --build-arg OFFLINE=1` needs no network (docs/deployment.md).
# Usage: scripts/wheelhouse.sh [DIR] [pip download options]
#   e.g. scripts/wheelhouse.sh wheelhouse --extra-index-url https://download.pytorch.org/whl/cpu
# Run it on Linux x86-64 with CPython 3.11 (the image's platform), or inside the base image.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-wheelhouse}
shift || true
python=${PYTHON:-python3}
# The build requirements too: the image builds featureserve from source (setup.py generates the gRPC stubs).
read -ra build < <("$python" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
"$python" -m pip download --quiet --disable-pip-version-check --dest "$dir" --only-binary :all: \
  --constraint constraints/lock.txt "$@" . "${build[@]}"
echo "wheelhouse.sh: $(find "$dir" -name '*.whl' | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir" >&2
