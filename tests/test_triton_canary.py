"""roles/triton/files/gpuprov-triton-canary.py, run as its unit runs it, against a stand-in Triton on
loopback: it asks for a restart (exit 1) only when Triton says ready and two tries fail (an answer
other than 200 or 503, or no answer while Triton's counters stand still); a busy server, one that is
not ready, a full queue and bad arguments are left alone (exit 0)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CANARY = Path(__file__).resolve().parents[1] / "roles/triton/files/gpuprov-triton-canary.py"


class StandIn:
    """ready: /v2/health/ready answers 200; status: the generate's answer; delay: seconds before it;
    tokens: the progress counter, moving while a delayed generate waits when `moving`, and by one when
    a generate completes with 200 (as Triton counts a finished inference); reset_after: the counter
    falls to 0 once that many reads of the metrics were answered (a restart at a known point of the
    canary's run, whatever its speed)."""

    def __init__(self) -> None:
        self.ready, self.status, self.delay, self.moving, self.tokens = True, 200, 0.0, False, 0
        self.generates, self.metrics_reads = 0, 0
        self.reset_after: int | None = None
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/v2/health/ready":
                    self._send(200 if stand_in.ready else 400, b"")
                elif self.path == "/metrics":
                    body = (f'nv_inference_count{{model="m",version="1"}} 7\n'
                            f'gpuprov_engine_generated_tokens_total{{model="m"}} {stand_in.tokens}\n')
                    self._send(200, body.encode())
                    stand_in.metrics_reads += 1
                    if stand_in.metrics_reads == stand_in.reset_after:
                        stand_in.tokens = 0
                else:
                    self._send(404, b"")

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                stand_in.generates += 1
                end = time.monotonic() + stand_in.delay
                while time.monotonic() < end:
                    if stand_in.moving:
                        stand_in.tokens += 1
                    time.sleep(0.05)
                if stand_in.status == 200:
                    stand_in.tokens += 1
                with contextlib.suppress(OSError):  # the canary may have given up on this answer
                    self._send(stand_in.status, b'{"error": "Stub process is not healthy."}'
                               if stand_in.status != 200 else b'{"text_output": "p"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def triton():
    s = StandIn()
    yield s
    s.server.shutdown()
    s.server.server_close()


def canary(triton: StandIn, timeout: float = 1.0, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(CANARY), triton.url, "m", str(timeout), f"{triton.url}/metrics", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_a_healthy_server_is_left_alone(triton):
    r = canary(triton)
    assert r.returncode == 0 and triton.generates == 1, r.stderr


def test_a_dead_stub_answering_400_is_restarted_after_two_tries(triton):
    triton.status = 400
    r = canary(triton)
    assert r.returncode == 1, r.stdout + r.stderr
    assert triton.generates == 2
    assert "try 1 of 2 failed: HTTP 400" in r.stderr and "restarting it" in r.stderr


@pytest.mark.parametrize("change", [{"ready": False}, {"status": 503}])
def test_not_ready_or_a_full_queue_is_left_alone(triton, change):
    for k, v in change.items():
        setattr(triton, k, v)
    r = canary(triton)
    assert r.returncode == 0, r.stderr


def test_a_slow_answer_from_a_busy_server_is_left_alone(triton):
    triton.delay, triton.moving = 3.0, True  # no answer within 1 s, but tokens keep coming
    r = canary(triton)
    assert r.returncode == 0, r.stderr
    assert "making progress" in r.stdout and triton.generates == 1


def test_a_slow_server_answering_after_the_timeout_is_left_alone(triton):
    """Seen in CI on an overloaded host: each one-token generate took longer than the canary waits,
    so neither try's own window saw a counter move, yet the first try's request finished while the
    second waited. Progress since the first try began is progress: no restart."""
    # answers, but only 2.5 s after the 1 s the canary waits (and before the second try, 5 s later)
    triton.delay, triton.moving = 3.5, False
    r = canary(triton)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "try 1 of 2 failed" in r.stderr and "making progress" in r.stdout and triton.generates == 2


def test_counters_reset_by_a_restart_meanwhile_are_not_a_hang(triton):
    """Triton restarted between the canary's tries (its counters start again from zero): the second
    try's counters are below the first's, which is no evidence of a hang."""
    triton.tokens, triton.delay, triton.moving = 100, 30.0, False
    # Between the tries: the first try reads the counters before and after its generate.
    triton.reset_after = 2
    r = canary(triton)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "making progress" in r.stdout and triton.generates == 2


def test_a_hung_server_is_restarted(triton):
    triton.delay, triton.moving = 30.0, False  # no answer within the canary's tries and nothing moves
    r = canary(triton)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "made no progress meanwhile" in r.stderr and triton.generates == 2


def test_bad_arguments_never_restart_triton(triton):
    r = canary(triton, 1.0, "one too many")
    assert r.returncode == 0 and "bad arguments" in r.stderr and triton.generates == 0
