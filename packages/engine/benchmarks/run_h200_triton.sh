#!/usr/bin/env bash
# One device call on the H200: the Triton part of run_h200.sh alone, over a model whose tokenizer
# covers every id (make_model.py --fill-vocab). Writes setup.log, triton.log, triton_checks.txt and
# bench_triton_h200_v3.{json,log} under $OUT.
TRITON_ONLY=1 TAG=_v3 exec bash "$(dirname "$0")/run_h200.sh"
