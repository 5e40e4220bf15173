"""Turn ansible-runner's event stream into per-host progress and results.

ansible-runner calls an event handler with one dict per Ansible callback event. `RunTracker`
keeps what the CLI needs from them: each host's current task, tasks done, first and last event
time (its duration), and every task that reported a change (what `check` lists as drift).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TASK_END_EVENTS = {
    "runner_on_ok",
    "runner_on_failed",
    "runner_on_skipped",
    "runner_on_unreachable",
}


@dataclass
class Change:
    """One task that changed (or, in check mode, would change) a host."""

    host: str
    task: str
    role: str | None
    action: str
    diff: list[dict[str, Any]] = field(default_factory=list)

    def label(self) -> str:
        return f"{self.role} : {self.task}" if self.role else self.task


@dataclass
class HostProgress:
    host: str
    current_task: str = ""
    done: int = 0
    started: datetime | None = None
    finished: datetime | None = None
    failed_tasks: list[str] = field(default_factory=list)
    # Why the host could not be reached (the connection's own message, e.g. a host key that does
    # not match), in one line for the report (unreachable_reason).
    unreachable: str = ""

    @property
    def duration_s(self) -> float:
        if self.started is None or self.finished is None:
            return 0.0
        return (self.finished - self.started).total_seconds()


def unreachable_reason(msg: str) -> str:
    """One line that says why a host could not be reached. OpenSSH's warning about a changed host
    key opens with a banner of `@` (Ansible's message: "Failed to connect to the host via ssh: @@@..."),
    so its last line ("Host key verification failed.") is the reason then."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if not lines:
        return "unreachable"
    first = lines[0]
    if re.search(r"@{5,}", first):
        prefix = first.split("@", 1)[0].strip()
        return f"{prefix} {lines[-1]}".strip()[:300]
    return first[:300]


def _parse_time(created: str | None) -> datetime | None:
    if not created:
        return None
    try:
        return datetime.fromisoformat(created)
    except ValueError:
        return None


class RunTracker:
    """Accumulates state from ansible-runner events; `handle` is the runner's event_handler."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostProgress] = {}
        self.changes: list[Change] = []
        # Tasks whose result no_log hid: whether they changed anything shows only in the stats.
        self.hidden: list[Change] = []
        self.current_task: str = ""
        self.play: str = ""

    def host(self, name: str) -> HostProgress:
        if name not in self.hosts:
            self.hosts[name] = HostProgress(name)
        return self.hosts[name]

    def handle(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        when = _parse_time(event.get("created"))
        if kind == "playbook_on_play_start":
            self.play = data.get("play", "")
        elif kind == "playbook_on_task_start":
            self.current_task = data.get("task", "")
        elif kind == "runner_on_start":
            hp = self.host(data.get("host", "?"))
            hp.current_task = data.get("task", "")
            if when and hp.started is None:
                hp.started = when
        elif kind in TASK_END_EVENTS:
            self._task_end(kind, data, when)
        # Returning True keeps the event in the artifacts' job_events.
        return True

    def _task_end(self, kind: str, data: dict[str, Any], when: datetime | None) -> None:
        hp = self.host(data.get("host", "?"))
        hp.done += 1
        if when:
            hp.started = hp.started or when
            hp.finished = when
        res = data.get("res") or {}
        task = data.get("task", "")
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            hp.failed_tasks.append(task)
        if kind == "runner_on_unreachable":
            hp.unreachable = unreachable_reason(str(res.get("msg") or ""))
        if kind == "runner_on_ok" and "censored" in res and not self._changed(res):
            self.hidden.append(Change(host=hp.host, task=task, role=data.get("role"),
                                      action=data.get("task_action", "")))
        if kind == "runner_on_ok" and self._changed(res):
            diff = res.get("diff") or []
            self.changes.append(
                Change(
                    host=hp.host,
                    task=task,
                    role=data.get("role"),
                    action=data.get("task_action", ""),
                    diff=diff if isinstance(diff, list) else [diff],
                )
            )

    @staticmethod
    def _changed(res: dict[str, Any]) -> bool:
        if res.get("changed"):
            return True
        # A loop reports changed per item as well as at the top.
        return any(isinstance(r, dict) and r.get("changed") for r in res.get("results") or [])

    def reconcile(self, changed_per_host: dict[str, int]) -> None:
        """Account for changes no_log hid: where the stats count more changed tasks for a host than
        the events showed, the hidden tasks are the changed ones. With as many hidden tasks as missing
        changes each is named; otherwise one entry names the candidates."""
        for host, count in changed_per_host.items():
            missing = int(count) - sum(1 for c in self.changes if c.host == host)
            hidden = [c for c in self.hidden if c.host == host]
            if missing <= 0 or not hidden:
                continue
            if len(hidden) == missing:
                self.changes.extend(hidden)
                continue
            names = ", ".join(c.label() for c in hidden)
            self.changes.append(Change(host=host, task=f"{missing} of these (output hidden by no_log): {names}",
                                       role=None, action=""))

    def changes_by_host(self) -> dict[str, list[Change]]:
        out: dict[str, list[Change]] = {}
        for change in self.changes:
            out.setdefault(change.host, []).append(change)
        return out
