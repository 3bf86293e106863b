#!/usr/bin/env bash
# Fills .whl/ with what perf/triton_gpu.sh carries to the GPU machine (no network there, 64 MiB per call):
#   numpy 1.26 (Triton 2.51's Python-backend stub breaks on NumPy 2), transformers, soundfile with cffi and pycparser,
#   soxr, tritonclient (gRPC; its perf_analyzer binaries left out) with python-rapidjson, and
#   tritonserver-2.51-pytriton.tar.xz: from the nvidia-pytriton 0.7.0 wheel, the server, the Python backend, the
#   CPython 3.12 stub and the bundled libraries they link (the NEEDED closure), laid out as the wheel installs them,
#   so that djz/triton_server.py's find_tritonserver() finds it once extracted into site-packages.
# Run from the repository root, where pip can reach PyPI: bash perf/pack_triton_carry.sh
set -euo pipefail
PYTHON=${PYTHON:-python3}
LIMIT_MIB=60
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

platforms=()
for tag in manylinux_2_35 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$stage/download" \
  nvidia-pytriton==0.7.0 numpy==1.26.4 transformers==5.24.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 \
  soxr==1.1.0 tritonclient==2.51.0 python-rapidjson==1.25

mkdir "$stage/whl"
for wheel in "$stage"/download/*.whl; do
  case "$(basename "$wheel")" in
    nvidia_pytriton-*) ;;
    tritonclient-*)  # the same wheel less bin/perf_analyzer and bin/perf_client (20 MB each)
      "$PYTHON" - "$wheel" "$stage/whl/$(basename "$wheel")" <<'EOF'
import sys, zipfile
source, target = sys.argv[1:]
with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if "/data/bin/" in item.filename:
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(line for line in data.splitlines(keepends=True) if b"/data/bin/" not in line)
        dst.writestr(item, data)
EOF
      ;;
    *) cp "$wheel" "$stage/whl/" ;;
  esac
done

# The server's part of the nvidia-pytriton wheel, and the bundled libraries that it, the backend and the stub load.
site="$stage/site"
server=pytriton/tritonserver
binaries=("$server/bin/tritonserver" "$server/backends/python/libtriton_python.so"
          "$server/python_backend_stubs/3.12/triton_python_backend_stub")
unzip -q "$stage"/download/nvidia_pytriton-*.whl "pytriton/__init__.py" "${binaries[@]}" \
  "$server/backends/python/*" "nvidia_pytriton.libs/*" -d "$site"
rm -rf "$site/$server/backends/python/__pycache__"
declare -A wanted=()
queue=("${binaries[@]}")
while [ ${#queue[@]} -gt 0 ]; do
  file=${queue[0]}; queue=("${queue[@]:1}")
  for lib in $(readelf -d "$site/$file" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
    if [ -f "$site/nvidia_pytriton.libs/$lib" ] && [ -z "${wanted[$lib]:-}" ]; then
      wanted[$lib]=1; queue+=("nvidia_pytriton.libs/$lib")
    fi
  done
done
members=(pytriton/__init__.py "${binaries[@]}" "$server/backends/python")
for lib in "${!wanted[@]}"; do members+=("nvidia_pytriton.libs/$lib"); done
left_out=$(cd "$site/nvidia_pytriton.libs" && ls | grep -vxF -f <(printf '%s\n' "${!wanted[@]}") || true)
echo "bundled libraries: ${#wanted[@]} linked; left out: ${left_out:-none}"
tar -C "$site" --sort=name --owner=0 --group=0 --numeric-owner -cf - "${members[@]}" \
  | xz -9e -T0 > "$stage/whl/tritonserver-2.51-pytriton.tar.xz"

mkdir -p .whl
rm -f .whl/*.whl .whl/*.tar.xz
mv "$stage"/whl/* .whl/
ls -l .whl
total=$(du -cb .whl/* | tail -1 | cut -f1)
echo "total: $((total / 1048576)) MiB ($total bytes; limit $LIMIT_MIB MiB, the tree travels beside it)"
[ "$total" -lt $((LIMIT_MIB * 1048576)) ] || { echo "too large for one device call" >&2; exit 1; }
