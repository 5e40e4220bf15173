"""Gateway overhead: gateway vs. direct generate_stream, concurrency 1 and 16.

Starts the Triton stand-in (tests/standins/triton_standin.py) and a gateway in front of
it on 127.0.0.1, then measures time to first token (first non-empty reasoning/content
text), throughput and the gateway's RSS. The backend is the stand-in, not Triton: the
numbers are the gateway's own overhead, not model speed.

    python benchmarks/bench.py [--requests 48] [--token-delay 0.005] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEY = "sk-bench-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"not up: {url}")


def visible(piece: str) -> bool:
    return bool(piece.replace("<think>", "").replace("</think>", "").strip())


async def direct_one(c: httpx.AsyncClient, url: str, i: int) -> tuple[float, float, int]:
    body = {"text_input": f"<|user|>\nhello {i}\n<|assistant|>\n", "max_tokens": 64,
            "temperature": 1.0, "top_p": 1.0, "stop_words": [], "stream": True,
            "apply_chat_template": False}
    t0 = time.perf_counter()
    ttft, n = None, 0
    async with c.stream("POST", url, json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                piece = json.loads(line[5:])["text_output"]
                if piece:
                    n += 1
                if ttft is None and visible(piece):
                    ttft = time.perf_counter() - t0
    return ttft or 0.0, time.perf_counter() - t0, n


async def gateway_one(c: httpx.AsyncClient, url: str, i: int) -> tuple[float, float, int]:
    body = {"model": "deepseek", "messages": [{"role": "user", "content": f"hello {i}"}],
            "max_tokens": 64, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, n = None, 0
    async with c.stream("POST", url, json=body,
                        headers={"Authorization": f"Bearer {KEY}"}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            obj = json.loads(line[6:])
            if obj.get("usage"):
                n = obj["usage"]["completion_tokens"]
            for ch in obj.get("choices") or []:
                d = ch["delta"]
                if ttft is None and (d.get("content") or d.get("reasoning_content")):
                    ttft = time.perf_counter() - t0
    return ttft or 0.0, time.perf_counter() - t0, n


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


async def run(fn, url: str, concurrency: int, total: int) -> dict:  # noqa: ANN001
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as c:
        for i in range(min(4, total)):  # warm-up
            await fn(c, url, -i)
        results: list[tuple[float, float, int]] = []
        counter = iter(range(total))

        async def worker() -> None:
            for i in counter:
                results.append(await fn(c, url, i))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ttfts = [r[0] * 1000 for r in results]
    return {
        "requests": len(results),
        "ttft_p50_ms": round(statistics.median(ttfts), 2),
        "ttft_p99_ms": round(pct(ttfts, 99), 2),
        "req_per_s": round(len(results) / wall, 1),
        "tokens_per_s": round(sum(r[2] for r in results) / wall, 1),
    }


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=48, help="requests per run")
    ap.add_argument("--token-delay", type=float, default=0.005, help="stand-in s/token")
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()
    tport, gport, mport = free_port(), free_port(), free_port()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "listen": {"host": "127.0.0.1", "port": gport},
            "metrics_listen": {"host": "127.0.0.1", "port": mport},
            "model": {"name": "deepseek"},
            "keys": [{"id": "bench", "hash": "sha256:" + hashlib.sha256(KEY.encode()).hexdigest(),
                      "rate": {"capacity": 1e9, "refill_per_s": 1e9}, "max_concurrent": 64}],
            "backends": {"local": {"url": f"http://127.0.0.1:{tport}"}},
            "audit": {"dir": f"{tmp}/audit"},
        }
        cpath = Path(tmp) / "gw.yaml"
        cpath.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        try:
            procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "tests/standins/triton_standin.py"), "--port",
                 str(tport), "--token-delay", str(a.token_delay)], env=env))
            gw = subprocess.Popen([sys.executable, "-m", "gpuprov_gateway", "serve", "--config",
                                   str(cpath)], env=env)
            procs.append(gw)
            wait(f"http://127.0.0.1:{tport}/v2/health/ready")
            wait(f"http://127.0.0.1:{gport}/healthz")
            direct = f"http://127.0.0.1:{tport}/v2/models/deepseek/generate_stream"
            via = f"http://127.0.0.1:{gport}/v1/chat/completions"
            rss_idle = rss_kib(gw.pid)
            out: dict = {"backend": "triton_standin.py (NOT Triton)",
                         "token_delay_s": a.token_delay, "python": platform.python_version(),
                         "cpus": os.cpu_count(), "runs": {}}
            for conc in (1, 16):
                d = asyncio.run(run(direct_one, direct, conc, a.requests))
                g = asyncio.run(run(gateway_one, via, conc, a.requests))
                out["runs"][f"c{conc}"] = {
                    "direct": d, "gateway": g,
                    "ttft_overhead_p50_ms": round(g["ttft_p50_ms"] - d["ttft_p50_ms"], 2),
                    "ttft_overhead_p99_ms": round(g["ttft_p99_ms"] - d["ttft_p99_ms"], 2),
                }
            out["gateway_rss_kib"] = {"idle": rss_idle["VmRSS"], **rss_kib(gw.pid)}
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
