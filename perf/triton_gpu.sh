#!/usr/bin/env bash
# The 1.5B VibeVoice (random weights) served by Triton on one GPU, measured two ways on the same server: over gRPC
# streaming with the voice sent as cached latents (encoded once by acoustic_encoder), as the orchestrator calls it,
# and over the ensemble's HTTP stream with the voice sent as audio on every request (the issue-3 figures).
# Runs in one device call from the repository root (about 5 minutes); figures and logs go to $OUT.
#
# The GPU image has no network, so .whl/ carries what it lacks; perf/pack_triton_carry.sh fills it (numpy 1.26 for
# Triton 2.51's Python-backend stub, transformers, soundfile, soxr, tritonclient, and the nvidia-pytriton wheel's
# server cut down to fit the 64 MiB that travels with a call).
set -euo pipefail
OUT=${OUT:-/tmp/out}
SIZE=${SIZE:-1.5B}
PRECISION=${PRECISION:-bf16}
STREAMS=${STREAMS:-64}
LEVELS=${LEVELS:-1 8 32 64}
FRAMES=${FRAMES:-75}
mkdir -p "$OUT"
# The CUDA postprocess kernel against its NumPy twin, with the image's own NumPy 2 and CuPy.
python3 -m pytest -q --noconftest -p no:cacheprovider tests/engine/test_postprocess.py 2>&1 | tail -3 || true

# A venv with the carried wheels, plus links to the image's other packages (torch, its CUDA libraries, ...) except
# those built for NumPy 2 (scipy, CuPy, ...), which transformers would import on finding them.
image_site=$(python3 -c "import torch, pathlib; print(pathlib.Path(torch.__file__).parent.parent)")
rm -rf /tmp/venv /tmp/checkpoint /tmp/repository
python3 -m venv --without-pip /tmp/venv
site=$(/tmp/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
carried=$(ls "$site" | sed -n 's/-[0-9].*\.dist-info$//p' | tr 'A-Z-' 'a-z_')
for entry in "$image_site"/*; do
  name=$(basename "$entry"); project=$(echo "${name%%-[0-9]*}" | tr 'A-Z-' 'a-z_')
  case "$project" in numpy*|scipy*|cupy*|sklearn*|scikit_learn*|pandas*|jax*|ml_dtypes*) continue ;; esac
  echo "$carried" | grep -qx "$project" && continue
  [ -e "$site/$name" ] || ln -s "$entry" "$site/$name"
done
tar -xJf .whl/tritonserver-2.51-pytriton.tar.xz -C "$site"
echo "$PWD" > "$site/djz.pth"  # the stubs ignore PYTHONPATH; a .pth file puts this checkout on their path
export PATH=/tmp/venv/bin:$PATH PYTHONUNBUFFERED=1
python -c "import numpy, torch, transformers; print('numpy', numpy.__version__, 'torch', torch.__version__,
  'transformers', transformers.__version__, torch.cuda.get_device_name())"

time python -m djz make-checkpoint --size "$SIZE" --out /tmp/checkpoint
time python -m djz export --checkpoint /tmp/checkpoint --out /tmp/repository --runtime torch --precision "$PRECISION" \
  --target gpu --max-streams "$STREAMS" --max-context 2048

python -m djz serve --model-repository /tmp/repository --triton-only > "$OUT/serve.log" 2>&1 &
serve=$!
for _ in $(seq 600); do grep -q "Ctrl-C stops it" "$OUT/serve.log" && break; kill -0 $serve || break; sleep 1; done
cat "$OUT/serve.log"
# The generator's histograms and each model's request count, cumulative: the second snapshot holds both sweeps.
metrics='^vibevoice_(step_seconds|batch_size|first_audio_seconds|loop_phase_seconds)_(sum|count)|^nv_inference_count'
# PROFILE_SECONDS=N: py-spy (carried in .whl/ when wanted) samples the generator's stub for N s from the first
# sweep's start, every thread, idle ones too: where the frame loop's time goes inside Triton.
profile() {
  sleep 2
  stub=$(pgrep -f 'backend_stub.*generator' | head -1)
  "$site/bin/py-spy" record --nonblocking --threads --idle --format raw -r 200 -d "$PROFILE_SECONDS" \
    -o "$OUT/generator_stacks.txt" --pid "$stub" > "$OUT/py-spy.log" 2>&1 || echo "py-spy failed" >> "$OUT/py-spy.log"
}
if [ -n "${PROFILE_SECONDS:-}" ] && [ -x "$site/bin/py-spy" ]; then profile & fi
for sweep in "grpc latents 8001" "http audio 8000"; do
  read -r protocol voice port <<< "$sweep"
  python perf/stream_bench.py --protocol "$protocol" --voice "$voice" --url "127.0.0.1:$port" \
    --concurrency $LEVELS --frames "$FRAMES" --voice-seconds 10 --json "$OUT/triton_gpu_${protocol}_$voice.json" \
    || echo "the $protocol sweep failed"
  curl -s 127.0.0.1:8002/metrics | grep -E "$metrics" > "$OUT/metrics_after_${protocol}_$voice.txt" || true
  cat "$OUT/metrics_after_${protocol}_$voice.txt"
done
kill -INT $serve && wait $serve || true
cp "$(grep -o '/tmp/tritonserver-[^ ]*\.log' "$OUT/serve.log" | head -1)" "$OUT/tritonserver.log" 2>/dev/null || true
