"""Live progress while a run goes (the tables at its end are gpuprov.report's)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from gpuprov.events import RunTracker


class Progress:
    """Per-host progress: a redrawn block on a terminal, one plain line per task otherwise."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, total: int | None = None) -> None:
        """`total`: the tasks a host is expected to run (gpuprov.tasks.task_total), shown as /N."""
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = total
        self._drawn = 0

    def _total(self, done: int) -> str:
        """"/N" from the listed task count; handlers and loops can push a host past it."""
        if not self.total:
            return ""
        return f"/{max(self.total, done)}"

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
            self.stream.write(f"[{done}{self._total(done)}] {host}: {state}: {task}\n")
            self.stream.flush()

    def _redraw(self, tracker: RunTracker) -> None:
        out = self.stream
        if self._drawn:
            out.write(f"\x1b[{self._drawn}F")
        lines = [f"play: {tracker.play}"]
        for hp in sorted(tracker.hosts.values(), key=lambda h: h.host):
            mark = " FAILED" if hp.failed_tasks else ""
            total = self._total(hp.done)
            lines.append(f"  {hp.host}: {hp.done}{total} tasks{mark}  {hp.current_task}"[:160])
        for line in lines:
            out.write("\x1b[2K" + line + "\n")
        self._drawn = len(lines)
        out.flush()
