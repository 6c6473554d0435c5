#!/usr/bin/env bash
# The GPU check (issue #6): on a machine with an NVIDIA GPU, build every example for target cuda,
# check it against target c, and time W3 and W5 beside PyTorch on the same GPU; under 5 minutes.
#   bash bench/gpu_check.sh [--data ../shared/workloads] [--steps 300]
# Writes bench/results/gpu_check.md. Needs nvcc and gradc's dependencies; PyTorch is optional.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "gpu_check: nvidia-smi not found"
command -v "${NVCC:-nvcc}" >/dev/null || { echo "gpu_check: nvcc not found (set NVCC)"; exit 2; }
if ! "$PY" -c "import gradc.templates" 2>/dev/null; then
    "$PY" -m pip install -q --no-build-isolation --no-deps -e . || "$PY" -m pip install -q -e .
fi
export GRADC_CACHE_DIR=${GRADC_CACHE_DIR:-$PWD/build/gpu-check-cache}
exec timeout 290 "$PY" bench/gpu_check.py "$@"
