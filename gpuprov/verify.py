"""`gpuprov verify`: the results of playbooks/verify.yml, one row per check and host.

Each check in a role's tasks/verify.yml is an `assert` whose name says what it checks and whose
message says what it found (`ignore_errors`, so one failed check does not hide the others). This
module keeps those results from ansible-runner's events; anything else that fails (an unreachable
host, a probe task that broke) is reported too, so a run can never pass by checking nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpuprov.events import RunTracker

ASSERT_ACTIONS = {"assert", "ansible.builtin.assert", "ansible.legacy.assert"}
PASS, FAIL, SKIP = "pass", "FAIL", "skip"
HEADERS = ("host", "check", "result", "found")


@dataclass
class Check:
    host: str
    name: str
    result: str
    found: str


class CheckCollector:
    """Event hook (tracker, event) that turns assert results into `Check`s."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def __call__(self, tracker: RunTracker, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host")
        if not host:
            return
        res = data.get("res") or {}
        name = data.get("task", "")
        if kind == "runner_on_unreachable":
            self.checks.append(Check(host, "host reachable", FAIL, _first_line(res.get("msg", "unreachable"))))
            return
        if data.get("task_action") not in ASSERT_ACTIONS:
            if kind == "runner_on_failed" and not data.get("ignore_errors"):
                self.checks.append(Check(host, f"task: {name}", FAIL, _first_line(res.get("msg", "failed"))))
            return
        if kind == "runner_on_ok":
            self.checks.append(Check(host, name, PASS, _first_line(res.get("msg", ""))))
        elif kind == "runner_on_failed":
            self.checks.append(Check(host, name, FAIL, _first_line(res.get("msg", ""))))
        elif kind == "runner_on_skipped":
            # Skipped events carry no result: the check's name says where it applies.
            self.checks.append(Check(host, name, SKIP, "not applicable on this host"))

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.result == FAIL]

    def rows(self) -> list[tuple[str, str, str, str]]:
        return [(c.host, c.name, c.result, c.found) for c in sorted(self.checks, key=lambda c: c.host)]


def _first_line(text: Any, width: int = 200) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."
