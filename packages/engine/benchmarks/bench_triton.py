"""Client benchmark through Triton's generate extension: N concurrent streams on
/v2/models/<model>/generate_stream (server-sent events), all started at once.

TTFT = time to the first event whose text_output is not empty (the client's first token of text);
`text before final` counts the requests whose first text came before their final event, so a TTFT
that is really the whole request (a stream sending all its text at the end) shows as 0/N. The time
to the first event of any kind is reported too. Tokens come from the final event's
num_output_tokens; total tok/s = tokens / wall time of the wave.

usage: python3 benchmarks/bench_triton.py [--url http://localhost:8000] [--model deepseek]
       [--concurrency 1 16 64] [--max-tokens 128] [--prompt-words 80] [--waves 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def events(resp):
    """The JSON payloads of a server-sent-event stream, with the time each arrived."""
    for raw in resp:
        line = raw.decode().strip()
        if line.startswith("data:"):
            ev = json.loads(line[5:])
            if "error" in ev:
                raise RuntimeError(ev["error"])
            yield time.perf_counter(), ev


def one(url: str, body: dict, out: list, i: int) -> None:
    t0 = time.perf_counter()
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    first = first_text = last = None
    n_events = text_events = n_out = n_in = 0
    text = ""
    with urllib.request.urlopen(req, timeout=120) as resp:
        for now, ev in events(resp):
            first = first or now
            last = now
            n_events += 1
            piece = ev.get("text_output", "")
            if piece:
                text_events += 1
                first_text = first_text or now
                text += piece
            n_out = int(ev.get("num_output_tokens", n_out))
            n_in = int(ev.get("num_input_tokens", n_in))
    out[i] = {"ttft_text": (first_text or last) - t0, "first_event": first - t0, "end": last - t0,
              "text_before_final": first_text is not None and first_text < last, "events": n_events,
              "text_events": text_events, "tokens": n_out, "n_in": n_in, "chars": len(text)}


def mean(xs) -> float:
    xs = list(xs)
    return statistics.fmean(xs) if xs else float("nan")


def summary(n: int, ok: list[dict], wall: float) -> dict:
    tokens = sum(o["tokens"] for o in ok)
    ttft = [o["ttft_text"] for o in ok]
    first = [o["first_event"] for o in ok]
    return {"n": n, "ok": len(ok), "wall_s": wall, "tokens": tokens, "tok_per_s": tokens / wall,
            "ttft_p50_ms": 1e3 * pct(ttft, 50), "ttft_p99_ms": 1e3 * pct(ttft, 99),
            "first_event_p50_ms": 1e3 * pct(first, 50), "first_event_p99_ms": 1e3 * pct(first, 99),
            "end_p50_ms": 1e3 * pct([o["end"] for o in ok], 50),
            "text_before_final": sum(o["text_before_final"] for o in ok),
            "with_text": sum(o["chars"] > 0 for o in ok),
            "num_input_tokens": sorted({o["n_in"] for o in ok}),
            "events_mean": mean(o["events"] for o in ok),
            "text_events_mean": mean(o["text_events"] for o in ok),
            "chars_mean": mean(o["chars"] for o in ok),
            "tokens_per_request": sorted({o["tokens"] for o in ok})}


def wave(url: str, n: int, max_tokens: int, prompt: str) -> dict:
    body = {"text_input": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0.0}
    out: list = [None] * n
    threads = [threading.Thread(target=one, args=(url, body, out, i)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(n, [o for o in out if o], time.perf_counter() - t0)


def line(c: int, r: dict) -> str:
    return (f"triton concurrency {c:3d}: {r['tok_per_s']:8.1f} tok/s total, TTFT (first text) p50 "
            f"{r['ttft_p50_ms']:7.1f} ms p99 {r['ttft_p99_ms']:7.1f} ms, text before final "
            f"{r['text_before_final']}/{r['ok']}, first event p50 {r['first_event_p50_ms']:.1f} ms, end p50 "
            f"{r['end_p50_ms']:.1f} ms, events/req {r['events_mean']:.1f} (with text {r['text_events_mean']:.1f}), "
            f"ok {r['ok']}/{r['n']}, input tokens {r['num_input_tokens']}, output tokens "
            f"{r['tokens_per_request']}, wall {r['wall_s']:.2f}s")


def main() -> None:
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
            print(line(c, r), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
