"""Gateway overhead: gateway vs. direct generate_stream, same backend, same run.

Backends:
  default            starts the Triton stand-in (tests/standins/triton_standin.py) on 127.0.0.1;
                     the gateway is the checkout's src/ (PYTHONPATH). The numbers are the gateway's
                     own overhead, not model speed.
  --triton-url URL   a real Triton server that is already running (generate extension); the
                     gateway is the gpuprov_gateway package installed in this interpreter.

The gateway runs as its own process on 127.0.0.1 (cache disabled, so every request reaches the
backend; audit log on; one key whose rate and concurrency limits never throttle). For each
concurrency C: one warm-up wave per path, then --waves waves; in each wave both paths run C
closed-loop workers of --rounds requests each, one path after the other, the order alternating
from wave to wave so both see the same backend state. Both paths send the same prompt text: the
gateway renders the chat message with its own renderer (model.dir = --model-dir), and the direct
path sends that rendered text with the fields the gateway's TritonBackend sends (temperature 0,
top_p 1, stop_words [], apply_chat_template false, same max_tokens).

TTFT = time to the first event with visible text on both paths (gateway: delta content or
reasoning_content; direct: text_output; i.e. not only whitespace or think tags, which the gateway
strips; the first non-empty text_output of any kind is reported too, as first_any_text).
Percentiles interpolate linearly. Throughput = completion tokens / summed wall time of the path's
waves (direct: num_output_tokens of the last event, else the number of text events; gateway:
usage.completion_tokens). Gateway RSS: VmRSS of its process sampled every 10 ms (idle, peak per
concurrency from its first measured wave on) and VmHWM at the end.

    python benchmarks/bench.py [--requests 48] [--token-delay 0.005] [--json OUT]
    python benchmarks/bench.py --triton-url http://127.0.0.1:8000 --model-dir /tmp/ds15 \\
        --context-length 2048 --max-tokens 128 --prompt-words 80 --concurrency 1 16 \\
        --waves 8 --rounds 10 4 --json OUT
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
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEY = "sk-bench-0123456789abcdef0123456789"
WORDS = ("gpu server ansible role triton model deepseek inference token cache batch stream prompt "
         "answer engine slot graph kernel memory").split()


@dataclass
class Result:
    ok: bool
    ttft_s: float = 0.0
    total_s: float = 0.0
    tokens: int = 0
    text_events: int = 0
    error: str = ""
    first_text_s: float | None = None  # direct: first non-empty text_output, visible or not


@dataclass
class Target:
    direct_url: str
    gateway_url: str
    model: str
    prompt: str  # the rendered prompt (what the gateway sends as text_input)
    content: str  # the chat message's content
    max_tokens: int


def visible(piece: str) -> bool:
    """Text a reader sees: not only whitespace or think tags (the gateway strips those)."""
    return bool(piece.replace("<think>", "").replace("</think>", "").strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=0.5, trust_env=False)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"not up: {url}")


async def direct_one(c: httpx.AsyncClient, t: Target) -> Result:
    body = {"text_input": t.prompt, "max_tokens": t.max_tokens, "temperature": 0.0, "top_p": 1.0,
            "stop_words": [], "stream": True, "apply_chat_template": False}
    t0 = time.perf_counter()
    ttft, first, n_events, n_out = None, None, 0, None
    try:
        async with c.stream("POST", t.direct_url, json=body) as r:
            if r.status_code != 200:
                return Result(False, error=f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                ev = json.loads(line[5:])
                if "error" in ev:
                    return Result(False, error=str(ev["error"])[:200])
                piece = ev.get("text_output")
                if piece:
                    n_events += 1
                    if first is None:
                        first = time.perf_counter() - t0
                    if ttft is None and visible(piece):
                        ttft = time.perf_counter() - t0
                if isinstance(ev.get("num_output_tokens"), int):
                    n_out = ev["num_output_tokens"]
    except httpx.HTTPError as e:
        return Result(False, error=f"{type(e).__name__}: {e}")
    total = time.perf_counter() - t0
    return Result(ttft is not None, ttft or 0.0, total, n_events if n_out is None else n_out,
                  n_events, "" if ttft is not None else "no text", first)


async def gateway_one(c: httpx.AsyncClient, t: Target) -> Result:
    body = {"model": t.model, "messages": [{"role": "user", "content": t.content}],
            "max_tokens": t.max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, n_events, n_out = None, 0, None
    try:
        async with c.stream("POST", t.gateway_url, json=body,
                            headers={"Authorization": f"Bearer {KEY}"}) as r:
            if r.status_code != 200:
                return Result(False, error=f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                obj = json.loads(line[6:])
                if "error" in obj:
                    return Result(False, error=str(obj["error"])[:200])
                if obj.get("usage"):
                    n_out = obj["usage"]["completion_tokens"]
                for ch in obj.get("choices") or []:
                    d = ch["delta"]
                    text = (d.get("reasoning_content") or "") + (d.get("content") or "")
                    if text:
                        n_events += 1
                        if ttft is None and visible(text):
                            ttft = time.perf_counter() - t0
    except httpx.HTTPError as e:
        return Result(False, error=f"{type(e).__name__}: {e}")
    total = time.perf_counter() - t0
    return Result(ttft is not None, ttft or 0.0, total, n_events if n_out is None else n_out,
                  n_events, "" if ttft is not None else "no text")


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class RssSampler:
    """VmRSS of one process, sampled every `period` seconds in a thread; `peak` since reset()."""

    def __init__(self, pid: int, period: float = 0.01) -> None:
        self.pid, self.period = pid, period
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def read(self) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.peak = max(self.peak, self.read()["VmRSS"])
            except (OSError, KeyError):
                return

    def start(self) -> None:
        self._thread.start()

    def reset(self) -> None:
        self.peak = self.read()["VmRSS"]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (/proc/PID/stat utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


OneFn = Callable[[httpx.AsyncClient, Target], Awaitable[Result]]


async def wave(fn: OneFn, c: httpx.AsyncClient, t: Target, workers: int,
               rounds: int) -> tuple[list[Result], float]:
    results: list[Result] = []

    async def worker() -> None:
        for _ in range(rounds):
            results.append(await fn(c, t))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return results, time.perf_counter() - t0


def summarize(results: list[Result], wall: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft_s * 1000 for r in ok]
    firsts = [r.first_text_s * 1000 for r in ok if r.first_text_s is not None]
    tokens = sum(r.tokens for r in ok)
    errors = sorted({r.error for r in results if not r.ok})
    return {
        "requests": len(results), "ok": len(ok),
        "ttft_p50_ms": round(pct(ttfts, 50), 2), "ttft_p99_ms": round(pct(ttfts, 99), 2),
        "ttft_mean_ms": round(statistics.fmean(ttfts), 2) if ttfts else float("nan"),
        **({"first_any_text_p50_ms": round(pct(firsts, 50), 2),
            "first_any_text_p99_ms": round(pct(firsts, 99), 2)} if firsts else {}),
        "total_p50_ms": round(pct([r.total_s * 1000 for r in ok], 50), 2),
        "wall_s": round(wall, 3), "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1) if wall else float("nan"),
        "req_per_s": round(len(ok) / wall, 2) if wall else float("nan"),
        "tokens_per_request": sorted({r.tokens for r in ok}),
        "text_events_per_request": sorted({r.text_events for r in ok}),
        "errors": errors[:5],
    }


def wave_line(conc: int, w: int, path: str, s: dict[str, Any]) -> str:
    return (f"c{conc:<3d} wave {w} {path:8s}: ttft p50 {s['ttft_p50_ms']:8.2f} ms p99 "
            f"{s['ttft_p99_ms']:8.2f} ms, {s['tokens_per_s']:8.1f} tok/s, ok {s['ok']}/{s['requests']}, "
            f"tokens/req {s['tokens_per_request']}, wall {s['wall_s']:.2f} s")


async def measure(t: Target, concurrency: list[int], rounds: list[int], waves: int,
                  rss: RssSampler) -> dict[str, Any]:
    paths: dict[str, OneFn] = {"direct": direct_one, "gateway": gateway_one}
    out: dict[str, Any] = {}
    for conc, rnd in zip(concurrency, rounds, strict=True):
        limits = httpx.Limits(max_connections=conc * 2 + 4, max_keepalive_connections=conc * 2 + 4)
        clients = {p: httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) for p in paths}
        try:
            for p, fn in paths.items():  # warm-up (not counted)
                for _ in range(2):
                    await fn(clients[p], t)
                await wave(fn, clients[p], t, conc, 1)
            rss.reset()
            per: dict[str, list[Result]] = {p: [] for p in paths}
            walls: dict[str, float] = dict.fromkeys(paths, 0.0)
            wave_stats: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
            cpu: dict[str, float] = dict.fromkeys(paths, 0.0)
            for w in range(waves):
                order = list(paths) if w % 2 == 0 else list(reversed(paths))
                for p in order:
                    cpu0 = cpu_seconds(rss.pid)
                    res, wall = await wave(paths[p], clients[p], t, conc, rnd)
                    cpu[p] += cpu_seconds(rss.pid) - cpu0
                    per[p] += res
                    walls[p] += wall
                    s = summarize(res, wall)
                    wave_stats[p].append({"wave": w, "first": order[0] == p, **s})
                    print(wave_line(conc, w, p, s), flush=True)
        finally:
            for c in clients.values():
                await c.aclose()
        d, g = summarize(per["direct"], walls["direct"]), summarize(per["gateway"], walls["gateway"])
        out[f"c{conc}"] = {
            "concurrency": conc, "rounds_per_worker": rnd, "waves": waves,
            "direct": d, "gateway": g,
            "ttft_overhead_p50_ms": round(g["ttft_p50_ms"] - d["ttft_p50_ms"], 2),
            "ttft_overhead_p99_ms": round(g["ttft_p99_ms"] - d["ttft_p99_ms"], 2),
            "throughput_change_pct": round(100 * (g["tokens_per_s"] / d["tokens_per_s"] - 1), 2),
            "gateway_rss_peak_kib": rss.peak,
            # the gateway process's CPU time during the gateway's waves, and per second of them
            "gateway_cpu_s": round(cpu["gateway"], 2),
            "gateway_cpu_cores": round(cpu["gateway"] / walls["gateway"], 3),
            "gateway_cpu_s_during_direct_waves": round(cpu["direct"], 2),
            "waves_detail": wave_stats,
        }
    return out


def gateway_config(a: argparse.Namespace, backend_url: str, gport: int, mport: int,
                   audit_dir: str) -> dict[str, Any]:
    model: dict[str, Any] = {"name": a.model, "context_length": a.context_length}
    if a.model_dir:
        model["dir"] = a.model_dir
    return {
        "listen": {"host": "127.0.0.1", "port": gport},
        "metrics_listen": {"host": "127.0.0.1", "port": mport},
        "model": model,
        "keys": [{"id": "bench", "hash": "sha256:" + hashlib.sha256(KEY.encode()).hexdigest(),
                  "rate": {"capacity": 1e9, "refill_per_s": 1e9}, "max_concurrent": 1024}],
        "backends": {"local": {"url": backend_url, "model": a.model}},
        "cache": {"enabled": False},
        "audit": {"dir": audit_dir},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--triton-url", help="a running Triton server; default: start the stand-in")
    ap.add_argument("--model", default="deepseek", help="Triton model name = public model name")
    ap.add_argument("--model-dir", help="the gateway's model.dir (tokenizer + chat template)")
    ap.add_argument("--context-length", type=int, default=8192, help="the gateway's model.context_length")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=0, help="prompt length in words (0: 'hello')")
    ap.add_argument("--prompt-prefix", default="",
                    help="text before the prompt's words ('[[long]] ': the stand-in's long answer)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--waves", type=int, default=3)
    ap.add_argument("--rounds", type=int, nargs="+",
                    help="requests per worker and wave, one value or one per concurrency")
    ap.add_argument("--requests", type=int, default=48,
                    help="without --rounds: about this many requests per path and concurrency")
    ap.add_argument("--token-delay", type=float, default=0.005, help="stand-in s/token")
    ap.add_argument("--gateway-log", help="the gateway's stdout/stderr go here")
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args(argv)
    if a.rounds is None:
        a.rounds = [max(1, round(a.requests / (a.waves * c))) for c in a.concurrency]
    elif len(a.rounds) == 1:
        a.rounds = a.rounds * len(a.concurrency)
    if len(a.rounds) != len(a.concurrency):
        ap.error("--rounds: one value, or one per --concurrency value")
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    real = a.triton_url is not None
    if not real:
        sys.path.insert(0, str(ROOT / "src"))
    from gpuprov_gateway.template import ChatRenderer  # the gateway's own renderer

    content = " ".join(WORDS[i % len(WORDS)] for i in range(a.prompt_words)) or "hello"
    content = a.prompt_prefix + content
    prompt = ChatRenderer(a.model_dir).render([{"role": "user", "content": content}])
    gport, mport = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    log: IO[str] | None = open(a.gateway_log, "a") if a.gateway_log else None
    env = dict(os.environ)
    if not real:
        env["PYTHONPATH"] = str(ROOT / "src")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if real:
                backend = a.triton_url.rstrip("/")
            else:
                tport = free_port()
                backend = f"http://127.0.0.1:{tport}"
                procs.append(subprocess.Popen(
                    [sys.executable, str(ROOT / "tests/standins/triton_standin.py"), "--port",
                     str(tport), "--token-delay", str(a.token_delay)], env=env))
                wait(f"{backend}/v2/health/ready", proc=procs[-1])
            cpath = Path(tmp) / "gw.yaml"
            cpath.write_text(yaml.safe_dump(gateway_config(a, backend, gport, mport, f"{tmp}/audit")))
            gw = subprocess.Popen([sys.executable, "-m", "gpuprov_gateway", "serve", "--config",
                                   str(cpath)], env=env, stdout=log, stderr=log)
            procs.append(gw)
            wait(f"http://127.0.0.1:{gport}/healthz", proc=gw)
            t = Target(f"{backend}/v2/models/{a.model}/generate_stream",
                       f"http://127.0.0.1:{gport}/v1/chat/completions", a.model, prompt, content,
                       a.max_tokens)
            rss = RssSampler(gw.pid)
            rss_idle = rss.read()["VmRSS"]
            rss.start()
            out: dict[str, Any] = {
                "backend": a.triton_url if real else "triton_standin.py (NOT Triton)",
                "argv": sys.argv, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "python": platform.python_version(), "cpus": os.cpu_count(),
                "model": a.model, "model_dir": a.model_dir, "max_tokens": a.max_tokens,
                "prompt_chars": len(prompt), "prompt_words": a.prompt_words,
                "gateway_config": gateway_config(a, backend, gport, mport, "<tmp>/audit"),
            }
            if not real:
                out["token_delay_s"] = a.token_delay
            try:
                import uvloop

                factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
            except ImportError:  # pragma: no cover
                factory = None
            with asyncio.Runner(loop_factory=factory) as runner:
                out["runs"] = runner.run(measure(t, a.concurrency, a.rounds, a.waves, rss))
            rss.stop()
            out["gateway_rss_kib"] = {"idle": rss_idle, **rss.read()}
            audit_files = sorted((Path(tmp) / "audit").glob("*.jsonl"))
            out["audit_lines"] = sum(len(f.read_text().splitlines()) for f in audit_files)
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            if log:
                log.close()
    for k, r in out["runs"].items():
        d, g = r["direct"], r["gateway"]
        print(f"{k}: TTFT p50 direct {d['ttft_p50_ms']} ms, gateway {g['ttft_p50_ms']} ms, "
              f"overhead {r['ttft_overhead_p50_ms']} ms; p99 direct {d['ttft_p99_ms']} ms, gateway "
              f"{g['ttft_p99_ms']} ms, overhead {r['ttft_overhead_p99_ms']} ms; tok/s direct "
              f"{d['tokens_per_s']}, gateway {g['tokens_per_s']} ({r['throughput_change_pct']:+} %); "
              f"ok {d['ok']}/{d['requests']} and {g['ok']}/{g['requests']}; gateway RSS peak "
              f"{r['gateway_rss_peak_kib']} KiB; gateway CPU {r['gateway_cpu_cores']} cores in its waves",
              flush=True)
    rk = out["gateway_rss_kib"]
    print(f"gateway RSS: idle {rk['idle']} KiB, end {rk['VmRSS']} KiB, VmHWM {rk['VmHWM']} KiB",
          flush=True)
    text = json.dumps(out, indent=2)
    if a.json:
        Path(a.json).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
