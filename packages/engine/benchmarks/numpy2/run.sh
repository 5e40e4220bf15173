#!/usr/bin/env bash
# Why Triton 2.51's Python backend fails with numpy 2 (the cause of the native runtime's refusal on
# Debian 13, whose Python 3.13 has no numpy 1.x wheel). On this Debian 12 controller (Python 3.11,
# CPU): the nvidia-pytriton 0.7.0 wheel's tritonserver and its Python 3.11 stub, the model in
# repo/ (a BYTES input echoed back), once in a venv with numpy 2.3.5 and once with numpy 1.26.4.
# Prints each reply and what the stub handed to deserialize_bytes_tensor.
# usage: packages/engine/benchmarks/numpy2/run.sh [WORKDIR]   (downloads from PyPI into WORKDIR)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-/tmp/gpuprov-numpy2}
mkdir -p "$work"
cd "$work"
ls nvidia_pytriton-0.7.0-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --platform manylinux_2_35_x86_64 nvidia-pytriton==0.7.0 -d .
[ -d x ] || { mkdir x && (cd x && python3 -m zipfile -e ../nvidia_pytriton-0.7.0-*.whl .); }
T=$work/x/pytriton/tritonserver
py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
cp "$T/python_backend_stubs/$py/triton_python_backend_stub" "$T/backends/python/"
chmod +x "$T/backends/python/triton_python_backend_stub" "$T/bin/tritonserver"
libdir=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
port=18930
for np_version in 2.3.5 1.26.4; do
  venv=$work/venv-$np_version
  [ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q "numpy==$np_version"; }
  log=$work/triton-$np_version.log
  PATH=$venv/bin:$PATH LD_LIBRARY_PATH=$work/x/nvidia_pytriton.libs:$libdir "$T/bin/tritonserver" \
    --model-repository="$here/repo" --backend-directory="$T/backends" --http-port $port \
    --grpc-port $((port + 1)) --metrics-port $((port + 2)) --allow-gpu-metrics=false \
    --exit-timeout-secs 2 > "$log" 2>&1 &
  srv=$!
  for _ in $(seq 1 60); do curl -sf "localhost:$port/v2/health/ready" && break; sleep 1; done
  echo "== numpy $np_version"
  curl -s -X POST "localhost:$port/v2/models/m/infer" \
    -d '{"inputs":[{"name":"IN","shape":[1],"datatype":"BYTES","data":["object"]}]}'
  echo
  sleep 1
  grep -o -E 'numpy [0-9.]+: the stub.*|unpack_from requires.*' "$log" | head -3 || true
  kill "$srv"; wait "$srv" 2>/dev/null || true
  port=$((port + 10))
done
