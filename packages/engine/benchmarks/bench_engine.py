"""In-process benchmark of gpuprov_engine: all requests of a wave submitted at once; TTFT from submit to
the first token, inter-token latency between a request's tokens, total tok/s = generated tokens / wall
time of the wave; GPU memory. Optional checks against transformers' greedy generate.

usage: python3 benchmarks/bench_engine.py --model DIR [--concurrency 1 16 64] [--prompt-len 109]
       [--max-tokens 128] [--waves 2] [--check-hf 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gpuprov_engine import Engine  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def wave(eng, prompts, max_tokens):
    """Submit all prompts at once; return per-request timestamps."""
    n = len(prompts)
    times = [[] for _ in range(n)]
    done = threading.Event()
    left = [n]
    lock = threading.Lock()
    results = [None] * n

    def cb_for(i):
        def cb(ev):
            if ev.token_id is not None:
                times[i].append(time.perf_counter())
            if ev.finished:
                results[i] = ev.result
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()
        return cb

    t0 = time.perf_counter()
    starts = []
    for i, p in enumerate(prompts):
        starts.append(time.perf_counter())
        eng.submit(p, max_tokens=max_tokens, ignore_eos=True, on_token=cb_for(i))
    done.wait()
    wall = time.perf_counter() - t0
    ttft = [t[0] - s for t, s in zip(times, starts)]
    itl = [b - a for t in times for a, b in zip(t, t[1:])]
    tokens = sum(r.num_output_tokens for r in results)
    return {"n": n, "wall_s": wall, "tokens": tokens, "tok_per_s": tokens / wall,
            "ttft_p50_ms": 1e3 * pct(ttft, 50), "ttft_p99_ms": 1e3 * pct(ttft, 99), "ttft_max_ms": 1e3 * max(ttft),
            "itl_p50_ms": 1e3 * pct(itl, 50), "itl_p99_ms": 1e3 * pct(itl, 99),
            "itl_mean_ms": 1e3 * statistics.fmean(itl) if itl else None,
            "per_stream_tok_per_s": statistics.fmean((len(t) - 1) / (t[-1] - t[0]) for t in times if len(t) > 1),
            "finish": sorted({r.finish_reason for r in results}),
            "counts_ok": all(r.num_output_tokens == max_tokens and r.num_input_tokens == len(p)
                             for r, p in zip(results, prompts))}


def check_hf(model_dir, eng, n, prompt_len, max_tokens, device, dtype):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    rng = random.Random(7)
    out = []
    for i in range(n):
        p = [rng.randrange(5, 1024) for _ in range(prompt_len + 13 * i)]
        with torch.inference_mode():
            ref = hf.generate(torch.tensor([p], device=device), max_new_tokens=max_tokens, do_sample=False,
                              min_new_tokens=max_tokens)[0, len(p):].tolist()
        got = eng.generate(p, max_tokens=max_tokens, ignore_eos=True).output_token_ids
        same = next((k for k, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
        out.append({"prompt_len": len(p), "identical": ref == got, "matching_prefix": same, "of": len(ref)})
    del hf
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--prompt-len", type=int, default=109)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--waves", type=int, default=2)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-slots", type=int, default=64)
    ap.add_argument("--prefill-tokens", type=int, default=None)
    ap.add_argument("--check-hf", type=int, default=0, help="prompts to compare with transformers' generate")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, choices=[None, "bfloat16", "float32"])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = {"argv": sys.argv, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "torch": torch.__version__, "python": platform.python_version(), "device": device}
    import transformers
    report["transformers"] = transformers.__version__
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    t0 = time.perf_counter()
    eng = Engine(a.model, device=device, dtype=getattr(torch, a.dtype) if a.dtype else None,
                 max_model_len=a.max_model_len, max_slots=a.max_slots,
                 prefill_tokens=a.prefill_tokens, max_queue=1024)
    report["engine"] = {"init_s": time.perf_counter() - t0, "capture_s": eng.capture_seconds,
                        "slots": eng.num_slots, "max_model_len": eng.max_model_len,
                        "kv_cache_bytes": eng.kv_cache_bytes, "graphs": len(eng._graphs),
                        "prefill_tokens": eng.prefill_tokens,
                        "batch_buckets": eng.batch_buckets, "length_buckets": eng.length_buckets,
                        "dtype": str(eng.dtype)}
    print(json.dumps(report["engine"]), flush=True)
    rng = random.Random(0)
    mk = lambda: [rng.randrange(5, 1024) for _ in range(a.prompt_len)]  # noqa: E731
    # Warm-up: the prefill path for 1 and many prompts, and every graph bucket once.
    wave(eng, [mk()], 8)
    wave(eng, [mk() for _ in range(max(a.concurrency))], 4)
    report["runs"] = {}
    for c in a.concurrency:
        runs = [wave(eng, [mk() for _ in range(c)], a.max_tokens) for _ in range(a.waves)]
        report["runs"][str(c)] = runs
        for r in runs:
            print(f"concurrency {c:3d}: {r['tok_per_s']:8.1f} tok/s total, per stream {r['per_stream_tok_per_s']:6.1f} "
                  f"tok/s, TTFT p50 {r['ttft_p50_ms']:7.1f} ms p99 {r['ttft_p99_ms']:7.1f} ms, ITL p50 "
                  f"{r['itl_p50_ms']:6.2f} ms p99 {r['itl_p99_ms']:6.2f} ms, wall {r['wall_s']:.2f}s, "
                  f"counts ok {r['counts_ok']}", flush=True)
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        report["gpu_memory"] = {"max_allocated_GiB": torch.cuda.max_memory_allocated() / 2**30,
                                "reserved_GiB": torch.cuda.memory_reserved() / 2**30,
                                "device_used_GiB": (total - free) / 2**30}
        # Raw graph replay time per batch bucket (length bucket 256): the decode step floor.
        d, steps = eng.dec, {}
        for b in eng.batch_buckets:
            g = eng._graphs[(b, eng.length_buckets[0])]
            g.replay()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(50):
                g.replay()
            torch.cuda.synchronize()
            steps[str(b)] = 1e3 * (time.perf_counter() - t) / 50
        report["graph_replay_ms"] = steps
        print("graph replay ms by batch:", json.dumps({k: round(v, 3) for k, v in steps.items()}), flush=True)
        del d
    snap = eng.snapshot()
    report["metrics"] = {k: v for k, v in snap.items() if k not in ("ttft_seconds", "inter_token_seconds")}
    if a.check_hf:
        report["hf_check"] = check_hf(a.model, eng, a.check_hf, a.prompt_len, 32, device, eng.dtype)
        print("hf check:", json.dumps(report["hf_check"]), flush=True)
    eng.shutdown()
    if device == "cuda":
        report.setdefault("gpu_memory", {})["max_allocated_GiB_end"] = torch.cuda.max_memory_allocated() / 2**30
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    print("summary:", json.dumps({c: {k: round(statistics.fmean(r[k] for r in rs), 1)
                                      for k in ("tok_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms")}
                                  for c, rs in report["runs"].items()}))


if __name__ == "__main__":
    main()
