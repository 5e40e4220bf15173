"""The readiness probe against Triton leaves no connection open: Triton's stop waits (30 s, then
exit 1) for every open HTTP connection, and an idle one in httpx's pool stays open until the pool
is next used."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx

from gpuprov_gateway.backends import TritonBackend
from gpuprov_gateway.breaker import CircuitBreaker
from gpuprov_gateway.config import TritonConfig


def _one_keep_alive_answer(server: socket.socket, seen: dict[str, object]) -> None:
    """Answer one request with a keep-alive 200, then note whether the client closes within 3 s."""
    conn, _ = server.accept()
    with conn:
        conn.settimeout(3)
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        seen["request"] = request.decode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        try:
            seen["closed"] = conn.recv(1) == b""
        except TimeoutError:
            seen["closed"] = False


def test_the_readiness_probe_leaves_no_connection_open_to_triton():
    seen: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        triton = threading.Thread(target=_one_keep_alive_answer, args=(server, seen))
        triton.start()

        async def probe() -> bool:
            async with httpx.AsyncClient(trust_env=False) as client:
                backend = TritonBackend(TritonConfig("local", f"http://127.0.0.1:{port}", "deepseek"),
                                        CircuitBreaker(2, 10), "local", session=lambda: None)  # type: ignore[arg-type,return-value]
                ready = await backend.ready(client)
                # The client stays open (as the gateway's does) while Triton's side waits.
                await asyncio.to_thread(triton.join, 5)
                return ready

        assert asyncio.run(probe()) is True
    assert str(seen["request"]).startswith("GET /v2/health/ready HTTP/1.1")
    assert seen["closed"] is True, "the probe's connection stayed open after the answer"
