#!/usr/bin/env bash
# One device call on the H200: the gateway against direct generate_stream, same host, same run.
# Run from the repo root with packages/engine/.gpu (pack-tritonserver.sh's output + triton-venv.sh)
# and packages/gateway/.gpu-wheels (the gateway's wheel + its runtime wheels for CPython 3.12) carried:
#   1. Triton 2.51 + the engine exactly as packages/engine/benchmarks/run_h200.sh sets them up
#      (make_model.py's model at /tmp/ds15, triton/model.py, config.pbtxt.example + engine_pythonpath,
#      tritonserver from /tmp/ts with /tmp/tvenv first on PATH), HTTP on 127.0.0.1:8000;
#   2. the gateway from the wheels (pip --no-index --no-deps) in a venv of its own, /tmp/gwvenv, on
#      the image's Python 3.12 (not the torch venv, no system site-packages);
#   3. benchmarks/bench.py --triton-url: direct generate_stream vs /v1/chat/completions (stream),
#      concurrency 1 and 16, interleaved waves; bench.py writes the gateway's config and starts it.
# Files under $OUT: setup.log, env.txt, triton.log, checks.txt, gateway.log,
# bench_vs_triton_h200.{log,json}.
# GW_ONLY=1 TRITON_URL=http://...: skip step 1 and use a backend that is already running (a dry
# run of steps 2-3, e.g. against the stand-in); MODEL_DIR (default /tmp/ds15) and BASE_PY (default:
# the image's base Python) can be set for that; BENCH_ARGS replaces the benchmark's load options.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
GW=$(cd "$(dirname "$0")/.." && pwd)
ENG=$(cd "$GW/../engine" && pwd)
WHEELS=${WHEELS:-$GW/.gpu-wheels}
MODEL_DIR=${MODEL_DIR:-/tmp/ds15}
TRITON_URL=${TRITON_URL:-http://127.0.0.1:8000}
BENCH_ARGS=${BENCH_ARGS:---max-tokens 128 --prompt-words 80 --concurrency 1 16 --waves 8 --rounds 10 4}
S="$OUT/setup.log"; C="$OUT/checks.txt"
(date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; echo "nproc $(nproc)") > "$S"
srv=
cleanup() { [ -n "$srv" ] && kill "$srv" 2>/dev/null && wait "$srv" 2>/dev/null; }
trap cleanup EXIT

if [ "${GW_ONLY:-0}" != 1 ]; then
  cd "$ENG" || exit 1
  python3 benchmarks/make_model.py --out "$MODEL_DIR" >> "$S" 2>&1 || { tail -5 "$S"; exit 1; }
  # triton-venv.sh prints the environment tritonserver needs; it is applied to tritonserver only.
  tenv=$(bash .gpu/triton-venv.sh "$ENG/.gpu" 2>>"$S" | tee -a "$S" | grep ^export)
  [ -n "$tenv" ] || { echo "triton-venv.sh failed"; tail -5 "$S"; exit 1; }
  repo=/tmp/repo/deepseek/1; mkdir -p $repo
  cp triton/model.py $repo/model.py
  cp triton/config.pbtxt.example /tmp/repo/deepseek/config.pbtxt
  sed -i "s#\"/tmp/ds15\"#\"$MODEL_DIR\"#" /tmp/repo/deepseek/config.pbtxt
  echo "parameters { key: \"engine_pythonpath\" value: { string_value: \"$ENG/src\" } }" >> /tmp/repo/deepseek/config.pbtxt
  ts=/tmp/ts/pytriton/tritonserver
  (eval "$tenv"; exec $ts/bin/tritonserver --model-repository=/tmp/repo --backend-directory=$ts/backends \
     --http-port 8000 --grpc-port 8001 --metrics-port 8002 --log-verbose 0) > "$OUT/triton.log" 2>&1 &
  srv=$!
  t0=$(date +%s)
  until curl -sf "$TRITON_URL/v2/models/deepseek/ready" >/dev/null; do
    sleep 1
    if ! kill -0 $srv 2>/dev/null || [ $(( $(date +%s) - t0 )) -gt 240 ]; then
      echo "server not ready"; tail -20 "$OUT/triton.log"; exit 1
    fi
  done
  echo "triton ready after $(( $(date +%s) - t0 ))s" | tee "$C"
fi
cd "$GW" || exit 1

# The gateway's venv: the image's base interpreter (what /opt/torch/.venv was made from), its own
# site-packages, the wheels installed with the image's pip (--target; no index, no dependency
# resolution: huggingface_hub and what only it needs are left out, the gateway never imports them).
if [ -z "${BASE_PY:-}" ]; then
  home=$(sed -n 's/^home *= *//p' /opt/torch/.venv/pyvenv.cfg)
  BASE_PY=$home/python3.12
fi
GV=/tmp/gwvenv
ver=$("$BASE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
SPV=$GV/lib/python$ver/site-packages
rm -rf $GV; mkdir -p $GV/bin "$SPV"
ln -sf "$BASE_PY" $GV/bin/python3; ln -sf python3 $GV/bin/python
printf 'home = %s\ninclude-system-site-packages = false\nversion = %s\n' "$(dirname "$BASE_PY")" "$ver" > $GV/pyvenv.cfg
PIP_PY=${PIP_PY:-python3}
"$PIP_PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
  --target "$SPV" "$WHEELS"/*.whl >> "$S" 2>&1 || { echo "gateway wheels did not install"; tail -5 "$S"; exit 1; }
{
  date -u
  $GV/bin/python -c 'import sys; print(sys.executable, sys.version.split()[0], sys.prefix)'
  $GV/bin/python -c 'import importlib.metadata as m
for d in sorted(m.distributions(), key=lambda d: d.metadata["Name"].lower()):
    print(d.metadata["Name"], d.version)'
  $GV/bin/python -c 'import gpuprov_gateway.server, uvloop, httptools, tokenizers, cryptography, yaml; print("imports ok")'
} > "$OUT/env.txt" 2>&1
grep -q "imports ok" "$OUT/env.txt" || { echo "gateway venv broken"; cat "$OUT/env.txt"; exit 1; }

# What the gateway will send (its TritonBackend body, stop_words [] included), straight to Triton.
echo "generate_stream with the gateway's body, 6 tokens:" >> "$C"
curl -s --max-time 30 -X POST "$TRITON_URL/v2/models/deepseek/generate_stream" -d \
  '{"text_input": "hello gpu", "max_tokens": 6, "temperature": 0.0, "top_p": 1.0, "stop_words": [], "stream": true, "apply_chat_template": false}' \
  >> "$C" 2>&1
echo >> "$C"

margs=()
[ -d "$MODEL_DIR" ] && margs=(--model-dir "$MODEL_DIR" --context-length 2048)
# shellcheck disable=SC2086
timeout 330 $GV/bin/python benchmarks/bench.py --triton-url "$TRITON_URL" "${margs[@]}" $BENCH_ARGS \
  --gateway-log "$OUT/gateway.log" --json "$OUT/bench_vs_triton_h200.json" 2>&1 | tee "$OUT/bench_vs_triton_h200.log"
rc=${PIPESTATUS[0]}
echo "bench rc=$rc" | tee -a "$C"
if [ -n "$srv" ]; then
  echo "metrics:" >> "$C"
  curl -s --max-time 10 localhost:8002/metrics | grep -E "^gpuprov|^nv_inference_count|^nv_inference_request_success" >> "$C"
fi
exit "$rc"
