#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): CUDA tests, a one-GPU torchrun (DDP/nccl) train smoke, the RL smoke on
# the GPU and the paper-step benchmark, into ONE JSON (default results/benchmarks/gpu_check.json; the benchmark's
# own JSON beside it). Run from the repo root on a GPU machine: bash benchmarks/gpu_check.sh [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/benchmarks/gpu_check.json}"
mkdir -p "$(dirname "$OUT")"
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" benchmarks/gpu_check.py "$OUT"
