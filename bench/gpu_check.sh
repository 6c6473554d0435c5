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
# first, two small models under compute-sanitizer (out-of-bounds and uninitialized device reads)
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck initcheck; do
        timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 3 "$PY" bench/gpu_check.py \
            --models moons,w5_mf --sizes 1,33 --no-timing --out build/gpu-check-sanitizer \
            || { echo "gpu_check: compute-sanitizer $tool failed"; exit 3; }
    done
fi
exec timeout 180 "$PY" bench/gpu_check.py "$@"
