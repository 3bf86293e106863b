#!/usr/bin/env bash
# Measure a running Triton with NVIDIA's perf_analyzer (from the tritonclient 2.51 wheel) in gRPC streaming mode,
# one run per concurrency, each writing a CSV report, a per-request profile and its console output. For a decoupled
# model perf_analyzer's latency is the whole request's (its last response); the first audio's latency is read from
# the profile (.json, every response's timestamp) and printed after each run. Does not start a server:
# `djz serve` first.
#
#   perf/perf_analyzer.sh [-u localhost:8001] [-m vibevoice] [-o DIR] [-c "1 4 8"] [-n 16] [-d input.json]
#
#   -u  server gRPC address (default localhost:8001)
#   -m  model (default vibevoice: the ensemble whose generator is decoupled)
#   -o  output folder (default $OUT, else .demo/perf_analyzer, which git ignores)
#   -c  concurrencies, one run each (default "1 4 8")
#   -n  requests per measurement window (count_windows; default 16, at least 2 x concurrency)
#   -d  perf_analyzer --input-data JSON to use instead of the generated one (the vibevoice tensor contract)
#
# Needs: .venv with tritonclient[grpc,http]==2.51.0 and nvidia-pytriton (VENV=... to use another), libb64.so.0d
# (installed with apt as root, else taken from the pytriton wheel), libcudart.so.12 (the system's, else the
# pytriton wheel's copy).
set -euo pipefail

URL=localhost:8001
MODEL=vibevoice
OUTDIR=${OUT:-.demo/perf_analyzer}
CONCURRENCIES="1 4 8"
REQUESTS=16
INPUT_DATA=
VENV=${VENV:-.venv}

while getopts "u:m:o:c:n:d:h" opt; do
  case $opt in
    u) URL=$OPTARG ;;
    m) MODEL=$OPTARG ;;
    o) OUTDIR=$OPTARG ;;
    c) CONCURRENCIES=$OPTARG ;;
    n) REQUESTS=$OPTARG ;;
    d) INPUT_DATA=$OPTARG ;;
    *) sed -n "2,19p" "$0"; exit 2 ;;
  esac
done

PYTHON=$VENV/bin/python
[ -x "$PYTHON" ] || { echo "perf_analyzer.sh: no Python at $PYTHON; run 'make venv' or set VENV" >&2; exit 2; }

# perf_analyzer is a data file of the tritonclient wheel (2.41 to 2.55 ship it); find it through the package record.
PERF_ANALYZER=$("$PYTHON" - <<'EOF'
import importlib.metadata as md
files = [f for f in md.files("tritonclient") or () if f.name == "perf_analyzer"]
print(files[0].locate().resolve() if files else "")
EOF
)
if [ -z "$PERF_ANALYZER" ] || [ ! -x "$PERF_ANALYZER" ]; then
  echo "perf_analyzer.sh: the installed tritonclient has no perf_analyzer; pip install 'tritonclient[grpc,http]==2.51.0'" >&2
  exit 2
fi

PYTRITON_LIBS=$("$PYTHON" -c "import importlib.util, pathlib; s = importlib.util.find_spec('pytriton'); \
print(pathlib.Path(s.origin).parent.parent / 'nvidia_pytriton.libs' if s else '')")
LIBDIR=$(mktemp -d)
trap 'rm -rf "$LIBDIR"' EXIT

# libb64.so.0d: Debian's libb64-0d (installed when root), else the pytriton wheel's copy under its soname.
has_lib() { "$(command -v ldconfig || echo /sbin/ldconfig)" -p | grep "$1" >/dev/null; }
if ! has_lib 'libb64\.so\.0d' && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq libb64-0d >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null; } || true
fi
if ! has_lib 'libb64\.so\.0d'; then
  B64=$(ls "$PYTRITON_LIBS"/libb64-*.so.0d 2>/dev/null | head -1)
  [ -n "$B64" ] || { echo "perf_analyzer.sh: libb64.so.0d is missing; apt-get install libb64-0d" >&2; exit 2; }
  ln -s "$B64" "$LIBDIR/libb64.so.0d"
fi
# libcudart.so.12: the system's, else the pytriton wheel's copy (its file name carries a hash; link the soname).
if ! has_lib 'libcudart\.so\.12'; then
  CUDART=$(ls "$PYTRITON_LIBS"/libcudart-*.so.12* 2>/dev/null | head -1)
  [ -n "$CUDART" ] || { echo "perf_analyzer.sh: no libcudart.so.12 here or in nvidia-pytriton" >&2; exit 2; }
  ln -s "$CUDART" "$LIBDIR/libcudart.so.12"
fi
export LD_LIBRARY_PATH=$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

mkdir -p "$OUTDIR"
echo "$("$PERF_ANALYZER" --version 2>&1 | head -1) ($PERF_ANALYZER)"

# The vibevoice contract: TEXT BYTES [1], VOICE_LATENTS FP32 [speakers, frames, 64], VOICE_FRAMES INT32
# [speakers], EXACT_FRAMES INT32 [1], SEED INT64 [1].
if [ -z "$INPUT_DATA" ]; then
  INPUT_DATA=$OUTDIR/input_data.json
  "$PYTHON" - "$INPUT_DATA" <<'EOF'
import json, sys
import numpy as np

latents = np.random.default_rng(0).standard_normal((2, 8, 64)).astype(np.float32)
request = {
    "TEXT": {"content": ["Speaker 0: Hello there.\nSpeaker 1: Hi, how are you?"], "shape": [1]},
    "VOICE_LATENTS": {"content": latents.ravel().tolist(), "shape": list(latents.shape)},
    "VOICE_FRAMES": {"content": [8, 8], "shape": [2]},
    "EXACT_FRAMES": {"content": [16], "shape": [1]},
    "SEED": {"content": [1], "shape": [1]},
}
with open(sys.argv[1], "w") as f:
    json.dump({"data": [request]}, f)
EOF
fi

failed=
for c in $CONCURRENCIES; do
  n=$(( REQUESTS > 2 * c ? REQUESTS : 2 * c ))
  name=$OUTDIR/perf_analyzer_${MODEL}_c$c
  echo "== $MODEL at $URL, concurrency $c, $n requests per window -> $name.csv"
  # count_windows: every window waits for n finished requests, so slow (~1 s) requests still give whole windows.
  "$PERF_ANALYZER" -m "$MODEL" -u "$URL" -i grpc --streaming --input-data "$INPUT_DATA" \
    --concurrency-range "$c:$c" --measurement-mode count_windows --measurement-request-count "$n" \
    --stability-percentage 20 --max-trials 6 \
    -f "$name.csv" --profile-export-file "$name.json" 2>&1 | tee "$name.log" || { failed="$failed $c"; continue; }
  "$PYTHON" - "$name.json" "$INPUT_DATA" <<'EOF'
import json, statistics, sys

requests = json.load(open(sys.argv[1]))["experiments"][0]["requests"]
first = sorted((r["response_timestamps"][0] - r["timestamp"]) / 1e6 for r in requests if r["response_timestamps"])
last = sorted((r["response_timestamps"][-1] - r["timestamp"]) / 1e6 for r in requests if r["response_timestamps"])
responses = statistics.median(len(r["response_timestamps"]) for r in requests)
# a response may hold several frames (engine/chunking.py): the audio's length is the request's EXACT_FRAMES
exact = json.load(open(sys.argv[2]))["data"][0].get("EXACT_FRAMES")
timing = (f"{exact['content'][0]} frames in {responses:.0f} responses (RTF "
          f"{statistics.median(last) / 1000 / (exact['content'][0] * 3200 / 24000):.3f})" if exact else
          f"{responses:.0f} responses")
print(f"  first audio: p50 {statistics.median(first):.0f} ms, p99 {first[int(0.99 * (len(first) - 1))]:.0f} ms; "
      f"whole request: p50 {statistics.median(last):.0f} ms for {timing}")
EOF
done
if [ -n "$failed" ]; then
  echo "perf_analyzer.sh: no result at concurrency$failed (see the .log files in $OUTDIR)" >&2
  exit 1
fi
