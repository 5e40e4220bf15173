#!/usr/bin/env bash
# One device call on the H200 (run from packages/engine, with .gpu/ carried: pack-tritonserver.sh's
# output + triton-venv.sh): build the 1.5B-shaped model; bench the engine in-process; serve it with
# Triton 2.51 through triton/model.py and measure with bench_triton.py; check the engine in fp32
# against transformers' greedy generate. Writes 8 files under $OUT.
# The model's lm_head keeps only the rows of ids that decode to text (make_model.py), so a stream
# carries text from its first token on. TRITON_ONLY=1: the Triton part alone, the benchmark's files
# named bench_triton_h200${TAG}.
TRITON_ONLY=${TRITON_ONLY:-0}
TAG=${TAG:-}
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
ENG=$(pwd)
S="$OUT/setup.log"
(date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv) > "$S" 2>&1
python3 benchmarks/make_model.py --out /tmp/ds15 >> "$S" 2>&1 || { tail -5 "$S"; exit 1; }
if [ "$TRITON_ONLY" != 1 ]; then
  python3 benchmarks/bench_engine.py --model /tmp/ds15 --json "$OUT/bench_engine_h200_v2.json" 2>&1 \
    | grep -v Loading | tee "$OUT/bench_engine_h200_v2.log"
fi
eval "$(bash .gpu/triton-venv.sh "$ENG/.gpu" 2>>"$S" | tee -a "$S" | grep ^export)"
repo=/tmp/repo/deepseek/1; mkdir -p $repo
cp triton/model.py $repo/model.py
cp triton/config.pbtxt.example /tmp/repo/deepseek/config.pbtxt
echo "parameters { key: \"engine_pythonpath\" value: { string_value: \"$ENG/src\" } }" >> /tmp/repo/deepseek/config.pbtxt
ts=/tmp/ts/pytriton/tritonserver
$ts/bin/tritonserver --model-repository=/tmp/repo --backend-directory=$ts/backends --http-port 8000 \
  --grpc-port 8001 --metrics-port 8002 --log-verbose 0 > "$OUT/triton.log" 2>&1 &
srv=$!
t0=$(date +%s)
until curl -sf localhost:8000/v2/models/deepseek/ready >/dev/null; do
  sleep 1
  if ! kill -0 $srv 2>/dev/null || [ $(( $(date +%s) - t0 )) -gt 240 ]; then echo "server not ready"; break; fi
done
C="$OUT/triton_checks.txt"
echo "ready after $(( $(date +%s) - t0 ))s" | tee "$C"
for body in '{"text_input": "hello gpu", "max_tokens": 12}' '{"text_input": "hello gpu", "max_tokens": 0}' \
            '{"text_input": "hello gpu", "max_tokens": 4, "stream": true}'; do
  echo "generate $body:" >> "$C"; curl -s --max-time 30 -X POST localhost:8000/v2/models/deepseek/generate -d "$body" >> "$C"; echo >> "$C"
done
echo "generate_stream:" >> "$C"
curl -s --max-time 30 -X POST localhost:8000/v2/models/deepseek/generate_stream -d '{"text_input": "hello gpu", "max_tokens": 6, "stream": true}' >> "$C"
timeout 240 /opt/torch/.venv/bin/python3 benchmarks/bench_triton.py --waves 3 --json "$OUT/bench_triton_h200$TAG.json" 2>&1 | tee "$OUT/bench_triton_h200$TAG.log"
echo "metrics:" >> "$C"; curl -s --max-time 10 localhost:8002/metrics | grep -E "^gpuprov|^nv_inference_count" >> "$C"
kill $srv; wait $srv 2>/dev/null
[ "$TRITON_ONLY" = 1 ] && exit 0
/opt/torch/.venv/bin/python3 benchmarks/bench_engine.py --model /tmp/ds15 --dtype float32 --concurrency 1 --waves 1 --max-tokens 16 \
  --check-hf 4 --json "$OUT/check_fp32_h200.json" 2>&1 | grep -v Loading | tee -a "$OUT/bench_engine_h200_v2.log"
