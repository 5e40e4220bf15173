#!/usr/bin/python3
"""Triton's canary: a one-token generate against the served model, run by a systemd timer.

Triton 2.51 keeps answering ready when its Python backend's stub process has died, while every
request fails. This script judges only a server that says it is ready: when /v2/health/ready answers
200 and two generates in a row (a few seconds apart) of a valid one-token request get no answer or
any answer but 200 (with a dead stub Triton 2.51 answers 400), it exits 1, and the unit's OnFailure=
restarts Triton. A server that is not ready (starting, stopped, or down: systemd and the
TritonNotReady alert handle those) or a full queue (503) is left alone: exit 0.

usage: gpuprov-triton-canary.py URL MODEL TIMEOUT_S
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request

RETRY_AFTER_S = 5.0


def ready(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def generate(url: str, model: str, timeout: float) -> str | None:
    """None when the model answered (or its queue was full); else what went wrong."""
    body = json.dumps({"text_input": "ping", "max_tokens": 1}).encode()
    req = urllib.request.Request(f"{url}/v2/models/{model}/generate", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return None
    except urllib.error.HTTPError as e:
        if e.code == 503:  # a full queue: busy, not broken
            return None
        detail = e.read()[:300].decode(errors="replace")
        return f"HTTP {e.code}: {detail}"
    except (OSError, urllib.error.URLError) as e:
        return f"{type(e).__name__}: {e}"


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 64
    url, model, timeout = argv[1].rstrip("/"), argv[2], float(argv[3])
    errors = []
    for attempt in range(2):
        if not ready(url, 10.0):
            print("canary: Triton is not ready; nothing to judge")
            return 0
        err = generate(url, model, timeout)
        if err is None:
            return 0
        errors.append(err)
        print(f"canary: generate {attempt + 1} of 2 failed: {err}", file=sys.stderr)
        if attempt == 0:
            time.sleep(RETRY_AFTER_S)
    print(f"canary: Triton says ready but model {model} fails every request; restarting it",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
