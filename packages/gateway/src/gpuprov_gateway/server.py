"""Runs the API and the metrics listener (two uvicorn servers, one event loop); SIGHUP reloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gpuprov_gateway.app import build_app
from gpuprov_gateway.config import Config
from gpuprov_gateway.gateway import Gateway

log = logging.getLogger("gpuprov_gateway")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us (two servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# An idle keep-alive connection is kept longer than clients keep theirs (httpx, and so the openai SDK,
# drop theirs after 5 s, uvicorn's own default): with equal timeouts a client can send a request on a
# connection the server is closing at that moment, and it fails with a read error (seen once in 768
# requests on the H200, after a pause of about 5 s between waves). nginx's default, 75 s.
KEEPALIVE_IDLE_S = 75


def _uvicorn(app: Starlette, host: str, port: int) -> _Server:
    return _Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                       lifespan="off", timeout_graceful_shutdown=5,
                       timeout_keep_alive=KEEPALIVE_IDLE_S)
    )


def serve(cfg: Config, config_path: str) -> None:
    """Run until SIGTERM/SIGINT, on uvloop when it is installed."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run(cfg, config_path))


async def run(cfg: Config, config_path: str) -> None:
    gw = Gateway(cfg, config_path)
    api = _uvicorn(build_app(gw), cfg.listen.host, cfg.listen.port)
    async def metrics(_: Request) -> Response:
        # /metrics itself (Prometheus' default path), not a redirect to /metrics/.
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    metrics_app = Starlette(routes=[Route("/metrics", metrics)])
    met = _uvicorn(metrics_app, cfg.metrics_listen.host, cfg.metrics_listen.port)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        api.should_exit = True
        met.should_exit = True

    loop.add_signal_handler(signal.SIGHUP, gw.reload)
    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, stop)
    log.warning(
        "gpuprov-gateway: API on %s:%d, metrics on %s:%d", cfg.listen.host, cfg.listen.port,
        cfg.metrics_listen.host, cfg.metrics_listen.port,
    )
    try:
        await asyncio.gather(api.serve(), met.serve())
    finally:
        await gw.close()
