#!/usr/bin/env bash
# Install everything and serve REST on 127.0.0.1:8080 and gRPC on 127.0.0.1:50051, sift as the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/featureserve serve "$@"
