#!/usr/bin/env bash
# One-shot checks for a machine with a CUDA GPU, from the repository root, in an environment with the test
# extra and PyPI's CUDA build of torch==2.13.0 (as the Dockerfile's VARIANT=cuda installs it): the gpu-marked
# tests, REST throughput against in-process batches, and StreamFrames latency at 640x480 / 1000 keypoints.
# Results go to benchmarks/results/gpu/; name the device with the figures (nvidia-smi's line is saved there).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=benchmarks/results/gpu
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
"$python" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'"
export FEATURESERVE_DEVICES='["cuda:0"]'
"$python" -m pytest -q -p no:cacheprovider -m gpu tests/models/test_gpu.py
"$python" -m benchmarks.performance.throughput --quick --models scfeat caps --out "$out/throughput.json"
"$python" -m benchmarks.performance.grpc_latency --quick --models orb scfeat --width 640 --height 480 \
  --max-keypoints 1000 --out "$out/grpc_latency.json"
