"""What prompts cost to prefill, and the bound that puts on time to first token when many arrive at
once: `Decoder.prefill` for 1, 4 and 16 prompts of the same length in one batch (the engine's own
batched prefill), and one decode step for 1 and 16 rows.

When 16 prompts arrive together, the first token of the k-th to finish cannot come before k prompts
have been prefilled, however the scheduler orders or batches them. With the batched rate (16 prompts
in T16 ms), the median request (the 8th) waits at least 8/16 * T16; this prints that bound as a
multiple of one prompt's prefill (T1), next to the goal's 3x.

usage: python3 benchmarks/bench_prefill.py --model DIR [--prompt-len 109] [--repeat 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gpuprov_engine.model import Decoder  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Mean milliseconds of fn() over `repeat` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-len", type=int, default=109)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    from transformers import AutoModelForCausalLM

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    dec = Decoder(model, num_slots=64, max_len=a.max_model_len, device=torch.device("cpu"), dtype=torch.float32)
    prompt = [5 + i % (dec.vocab - 5) for i in range(a.prompt_len)]
    out: dict = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "prompt_len": a.prompt_len, "prefill_ms": {}, "decode_ms": {}}
    for n in (1, 4, 16):
        chunks = [(slot, 0, prompt) for slot in range(n)]
        out["prefill_ms"][n] = round(timed(lambda c=chunks: dec.prefill(c), a.repeat), 2)
        print(f"prefill of {n:2d} prompts of {a.prompt_len} tokens in one batch: {out['prefill_ms'][n]:7.2f} ms")
    for b in (1, 16):
        out["decode_ms"][b] = round(timed(lambda b=b: dec.decode(b, 256), a.repeat * 2), 2)
        print(f"decode step of {b:2d} rows: {out['decode_ms'][b]:7.2f} ms")
    t1, t16 = out["prefill_ms"][1], out["prefill_ms"][16]
    out["median_of_16_lower_bound_ms"] = round(t16 * 8 / 16, 2)
    out["bound_over_one"] = round(t16 * 8 / 16 / t1, 2)
    print(f"the median of 16 prompts that arrive together waits at least {out['median_of_16_lower_bound_ms']} ms of "
          f"prefill: {out['bound_over_one']}x one prompt's {t1} ms (goal: TTFT p50 at 16 at most 3x that at 1)")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
