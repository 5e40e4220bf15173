"""Client benchmark through Triton's generate extension: N concurrent streams on
/v2/models/<model>/generate_stream (server-sent events), all started at once. TTFT = first event;
tokens from the final event's num_output_tokens; total tok/s = tokens / wall time of the wave.

usage: python3 benchmarks/bench_triton.py [--url http://localhost:8000] [--model deepseek]
       [--concurrency 1 16 64] [--max-tokens 128] [--prompt-words 80] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one(url, body, out, i):
    t0 = time.perf_counter()
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    first, last, events, n_out, n_in, text = None, None, 0, 0, 0, ""
    with urllib.request.urlopen(req, timeout=120) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            ev = json.loads(line[5:])
            if "error" in ev:
                raise RuntimeError(ev["error"])
            now = time.perf_counter()
            first = first or now
            last = now
            events += 1
            text += ev.get("text_output", "")
            n_out = int(ev.get("num_output_tokens", n_out))
            n_in = int(ev.get("num_input_tokens", n_in))
    out[i] = {"ttft": first - t0, "end": last - t0, "events": events, "tokens": n_out, "n_in": n_in, "chars": len(text)}


def wave(url, n, max_tokens, prompt):
    body = {"text_input": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0.0}
    out = [None] * n
    threads = [threading.Thread(target=one, args=(url, body, out, i)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [o for o in out if o]
    tokens = sum(o["tokens"] for o in ok)
    ttft = [o["ttft"] for o in ok]
    return {"n": n, "ok": len(ok), "wall_s": wall, "tokens": tokens, "tok_per_s": tokens / wall,
            "ttft_p50_ms": 1e3 * pct(ttft, 50), "ttft_p99_ms": 1e3 * pct(ttft, 99),
            "num_input_tokens": sorted({o["n_in"] for o in ok}), "events_mean": statistics.fmean(
                o["events"] for o in ok), "tokens_per_request": sorted({o["tokens"] for o in ok})}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://localhost:8000")
    ap.add_argument("--model", default="deepseek")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=80)
    ap.add_argument("--waves", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    url = f"{a.url}/v2/models/{a.model}/generate_stream"
    words = ("gpu server ansible role triton model deepseek inference token cache batch stream prompt "
             "answer engine slot graph kernel memory").split()
    prompt = " ".join(words[i % len(words)] for i in range(a.prompt_words))
    wave(url, 2, 8, prompt)  # warm-up
    report = {"argv": sys.argv, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": {}}
    for c in a.concurrency:
        report["runs"][str(c)] = runs = [wave(url, c, a.max_tokens, prompt) for _ in range(a.waves)]
        for r in runs:
            print(f"triton concurrency {c:3d}: {r['tok_per_s']:8.1f} tok/s total, TTFT p50 {r['ttft_p50_ms']:7.1f} ms "
                  f"p99 {r['ttft_p99_ms']:7.1f} ms, ok {r['ok']}/{r['n']}, input tokens {r['num_input_tokens']}, "
                  f"output tokens {r['tokens_per_request']}, wall {r['wall_s']:.2f}s", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
