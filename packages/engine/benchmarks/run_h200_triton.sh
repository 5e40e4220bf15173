#!/usr/bin/env bash
# One device call on the H200: the Triton part of run_h200.sh alone, over make_model.py's model (lm_head
# rows kept only for ids that decode to text). Writes setup.log, triton.log, triton_checks.txt and
# bench_triton_h200${TAG:-_run5}.{json,log} under $OUT.
TRITON_ONLY=1 TAG=${TAG:-_run5} exec bash "$(dirname "$0")/run_h200.sh"
