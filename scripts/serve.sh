#!/usr/bin/env bash
# Install everything and serve REST on 127.0.0.1:8080 with sift as the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/featureserve serve "$@"
