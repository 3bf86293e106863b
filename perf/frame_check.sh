#!/usr/bin/env bash
# One device call that checks a change to the frame's kernels and measures it against the engine before it: each
# piece of the 1.5B frame profiled with this checkout's engine (with the dependent-launch check: every piece's
# replays equal, bit for bit, its replays without) and with BASELINE's, then the one-stream benchmarks at PRECISIONS
# (RTF, first audio by phase, readiness, error against fp32). About 7 minutes on a fresh machine; output in $OUT.
#
#   git archive <commit> engine | tar -x -C exp/head     # the baseline engine, an ignored folder carried along
#   run: bash perf/frame_check.sh    (carry .whl-gpu-bench and exp)
#
# TRITON_CACHE_DIR keeps the compiled Triton kernels in $OUT/triton-cache: copied into exp/triton-cache and carried
# into a later call (where the 64 MiB a call carries allows), they spare it their compilation.
set -uo pipefail
OUT=${OUT:-/tmp/out}
BASELINE=${BASELINE:-exp/head}
SIZE=${SIZE:-1.5B}
PRECISIONS=${PRECISIONS:-fp8}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-gpu-bench/*.whl >/dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD:$PWD/perf
export TRITON_CACHE_DIR=$OUT/triton-cache
if [ -d exp/triton-cache ]; then mkdir -p "$TRITON_CACHE_DIR" && cp -r exp/triton-cache/. "$TRITON_CACHE_DIR"; fi
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"

timeout -s KILL 70 python3 perf/profile_frame.py --size "$SIZE" --slots 1 --kernels 3 2>&1 | tee "$OUT/profile_now.txt"
if [ -d "$BASELINE/engine" ]; then
  PYTHONPATH=/tmp/site:$PWD/$BASELINE:$PWD/perf timeout -s KILL 60 python3 perf/profile_frame.py --size "$SIZE" \
    --slots 1 2>&1 | tee "$OUT/profile_baseline.txt" | tail -3
fi
for precision in $PRECISIONS; do
  timeout -s KILL 200 python3 perf/gpu_bench.py --size "$SIZE" --streams 1 --precision "$precision" \
    --skip-transformers --json "$OUT/gpu_bench_${SIZE}_${precision}.json" 2>&1 | tail -22
done
