"""Terminal output: live progress while a run goes, tables when it ends."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from gpuprov.events import RunTracker
from gpuprov.runner import HostRecap


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def recap_table(recaps: Sequence[HostRecap]) -> str:
    rows = [
        (r.host, r.ok, r.changed, r.failed, r.unreachable, r.skipped, f"{r.duration_s:.1f}s")
        for r in recaps
    ]
    return table(("host", "ok", "changed", "failed", "unreachable", "skipped", "duration"), rows)


def _total(tracker: RunTracker, done: int) -> str:
    """"/N" from the listed task count; handlers and loops can push a host past it."""
    if not tracker.task_total:
        return ""
    return f"/{max(tracker.task_total, done)}"


class Progress:
    """Per-host progress: a redrawn block on a terminal, one plain line per task otherwise."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._drawn = 0

    def __call__(self, tracker: RunTracker, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        if self.tty:
            if kind in ("runner_on_start", "runner_on_ok", "runner_on_failed",
                        "runner_on_skipped", "runner_on_unreachable"):
                self._redraw(tracker)
            return
        if kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            data = event.get("event_data") or {}
            res = data.get("res") or {}
            state = {
                "runner_on_failed": "FAILED",
                "runner_on_unreachable": "UNREACHABLE",
            }.get(kind, "changed" if res.get("changed") else "ok")
            host = data.get("host", "?")
            done = tracker.hosts[host].done if host in tracker.hosts else 0
            task = data.get("task", "")
            if data.get("role"):
                task = f"{data['role']} : {task}"
            self.stream.write(f"[{done}{_total(tracker, done)}] {host}: {state}: {task}\n")
            self.stream.flush()

    def _redraw(self, tracker: RunTracker) -> None:
        out = self.stream
        if self._drawn:
            out.write(f"\x1b[{self._drawn}F")
        lines = [f"play: {tracker.play}"]
        for hp in sorted(tracker.hosts.values(), key=lambda h: h.host):
            mark = " FAILED" if hp.failed_tasks else ""
            total = _total(tracker, hp.done)
            lines.append(f"  {hp.host}: {hp.done}{total} tasks{mark}  {hp.current_task}"[:160])
        for line in lines:
            out.write("\x1b[2K" + line + "\n")
        self._drawn = len(lines)
        out.flush()
