#!/usr/bin/env bash
# The GPU benchmarks in one go (about 8 minutes on one H100/H200): writes runs/gpu_bench.json (or --out PATH).
#   bash bench/gpu.sh                 # full sizes, needs CUDA
#   bash bench/gpu.sh --tiny          # toy sizes, runs anywhere (CPU dry run)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# Works from a plain checkout too: without `pip install -e .` the package is imported from the tree.
if ! python -c "import embedcache" 2>/dev/null; then
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
# Fewer fragmentation failures when a 16 GB split and the training batches share the GPU.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
exec python -m bench.gpu "$@"
