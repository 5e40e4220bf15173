#!/usr/bin/python3
"""Triton's canary: a one-token generate against the served model, run by a systemd timer.

Triton 2.51 keeps answering ready when its Python backend's stub process has died, while every
request fails (a 400 at once). This script judges only a server that says it is ready, and exits 1
(the unit's OnFailure= then restarts Triton) only when two tries in a row, a few seconds apart, were
bad:
- a valid one-token generate got an answer other than 200 (a full queue's 503 is busy, not broken);
- or it got no answer in time while Triton made no progress meanwhile (its request and token
  counters on the metrics port did not move since the first try began): a hung model. A busy
  server that is still producing tokens is left alone, however slow the canary's own request.
Anything else exits 0: a server that is not ready (starting, stopped, or down: systemd and the
TritonNotReady alert handle those), a busy one, bad arguments or an error of this script itself
(said on stderr; restarting Triton would not mend those).

usage: gpuprov-triton-canary.py URL MODEL TIMEOUT_S METRICS_URL
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request

RETRY_AFTER_S = 5.0
# Counters that move while Triton serves (requests done, tokens generated, first tokens).
PROGRESS = ("nv_inference_count", "nv_inference_exec_count", "gpuprov_engine_generated_tokens_total",
            "gpuprov_time_to_first_token_seconds_count")


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10) as resp:
            return resp.status == 200
    except Exception:
        return False


def progress(metrics_url: str) -> float | None:
    """The sum of Triton's progress counters, or None when the metrics cannot be read."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            text = resp.read().decode(errors="replace")
    except Exception:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(PROGRESS):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return total


def generate(url: str, model: str, timeout: float) -> tuple[str, str]:
    """("ok" | "busy" | "bad" | "timeout", detail)."""
    body = json.dumps({"text_input": "ping", "max_tokens": 1}).encode()
    req = urllib.request.Request(f"{url}/v2/models/{model}/generate", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return "ok", ""
    except urllib.error.HTTPError as e:
        if e.code == 503:
            return "busy", "HTTP 503"
        try:
            detail = e.read()[:300].decode(errors="replace")
        except Exception:
            detail = ""
        return "bad", f"HTTP {e.code}: {detail}"
    except TimeoutError:
        return "timeout", f"no answer within {timeout:g} s"
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            return "timeout", f"no answer within {timeout:g} s"
        return "bad", f"{type(e).__name__}: {e}"
    except Exception as e:  # a broken answer (IncompleteRead, BadStatusLine, a reset connection)
        return "bad", f"{type(e).__name__}: {e}"


def judge(url: str, model: str, timeout: float, metrics_url: str) -> int:
    # Progress counts from the first try's start: a slow server finishes the first try's request
    # after that try gave up, and the second try waits behind it; that is progress, not a hang.
    start: float | None = None
    for attempt in (1, 2):
        if not ready(url):
            print("canary: Triton is not ready; nothing to judge")
            return 0
        before = progress(metrics_url)
        start = before if start is None else start
        verdict, detail = generate(url, model, timeout)
        if verdict in ("ok", "busy"):
            return 0
        if verdict == "timeout":
            after = progress(metrics_url)
            # Counters that fell mean Triton restarted meanwhile (systemd's business, not a hang).
            if start is None or after is None or after != start or (before is not None and after != before):
                print(f"canary: {detail}, but Triton is making progress (or its metrics cannot be read):"
                      " busy, not broken")
                return 0
            detail += " and Triton made no progress meanwhile"
        print(f"canary: try {attempt} of 2 failed: {detail}", file=sys.stderr)
        if attempt == 1:
            time.sleep(RETRY_AFTER_S)
    print(f"canary: Triton says ready but model {model} fails every request; restarting it",
          file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print("canary: " + __doc__.strip().splitlines()[-1] + " (bad arguments; nothing judged)", file=sys.stderr)
        return 0
    try:
        return judge(argv[1].rstrip("/"), argv[2], float(argv[3]), argv[4])
    except Exception as e:  # this script's own fault: never a reason to restart Triton
        print(f"canary: error, nothing judged: {type(e).__name__}: {e}", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
