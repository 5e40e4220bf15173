"""Runs an async generator in a task of its own, so the reader can wait with a timeout
(for keep-alives) without cancelling the generator, and one task owns the backend stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

TIMEOUT = object()
END = object()


class Pump:
    def __init__(self, agen: AsyncIterator[Any]) -> None:
        self._agen = agen
        self._q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=256)
        self._task = asyncio.create_task(self._run())
        self._get: asyncio.Future[tuple[str, Any]] | None = None

    async def _run(self) -> None:
        try:
            async for ev in self._agen:
                await self._q.put(("ev", ev))
            await self._q.put(("end", None))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # handed to the reader
            await self._q.put(("err", e))

    async def next(self, timeout: float | None) -> Any:
        """The next item, TIMEOUT, or END; re-raises the generator's exception."""
        if self._get is None and not self._q.empty():
            kind, value = self._q.get_nowait()
        elif self._get is None and timeout is None:
            kind, value = await self._q.get()
        else:
            if self._get is None:
                self._get = asyncio.ensure_future(self._q.get())
            done, _ = await asyncio.wait({self._get}, timeout=timeout)
            if not done:
                return TIMEOUT
            kind, value = self._get.result()
            self._get = None
        return _unwrap(kind, value)

    def ready(self) -> Any:
        """An item already queued (the generator's exception re-raised), END, or None when nothing
        is waiting: never waits, so a reader can merge what piled up while it was writing."""
        if self._get is not None or self._q.empty():
            return None
        return _unwrap(*self._q.get_nowait())

    async def close(self) -> None:
        for t in (self._get, self._task):
            if t is not None and not t.done():
                t.cancel()
        await asyncio.gather(
            *(t for t in (self._get, self._task) if t is not None), return_exceptions=True
        )


def _unwrap(kind: str, value: Any) -> Any:
    """A queue entry as the reader gets it: END, the item, or the generator's exception raised."""
    if kind == "end":
        return END
    if kind == "err":
        raise value
    return value
