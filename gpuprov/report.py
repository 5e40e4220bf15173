"""What a run leaves: the tables printed when it ends, the listing of a check's changes, and its
summary.json beside ansible-runner's artifacts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpuprov.runner import HostRecap, RunRequest, RunResult


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


def failures(result: RunResult) -> list[str]:
    """One line per failed task, by host; a host that could not be reached says why."""
    # A delegated task that may fail to reach its peer (ignore_unreachable) is reported under the
    # delegating host: only a host that the recap counts unreachable gets the line.
    unreachable = {r.host for r in result.recaps if r.unreachable}
    out = []
    for hp in sorted(result.tracker.hosts.values(), key=lambda h: h.host):
        for task in hp.failed_tasks:
            out.append(f"FAILED {hp.host}: {task}")
        if hp.unreachable and hp.host in unreachable:
            out.append(f"UNREACHABLE {hp.host}: {hp.unreachable}")
    return out


def check_listing(result: RunResult) -> str:
    """A check run's changes by host, or the line that says the hosts match."""
    by_host = result.tracker.changes_by_host()
    out = []
    for host in sorted(by_host):
        out.append(f"\n{host}: {len(by_host[host])} task(s) would change")
        out += [f"  - {change.label()}" for change in by_host[host]]
    if not by_host and not result.failed:
        out.append("\nno changes: the hosts match the repository")
    return "\n".join(out)


def play_report(result: RunResult, check: bool) -> str:
    """What `apply` and `check` print when the run ends."""
    out = ["", recap_table(result.recaps), *failures(result)]
    if check:
        out.append(check_listing(result))
    out.append(f"\nartifacts: {result.run_dir}")
    return "\n".join(out)


def summary(req: RunRequest, result: RunResult, started_at: datetime, strategy: str) -> dict[str, Any]:
    """summary.json's content: the request (no inline extra-vars: they may be secret), the result, each
    host's recap and every change."""
    return {
        "command": req.command,
        "playbook": req.playbook,
        "module": req.module,
        "inventories": list(req.inventories),
        "limit": req.limit,
        "tags": req.tags,
        "check": req.check,
        "strategy": strategy,
        # Only the names of extra-vars files; inline values may be secret.
        "extra_vars_files": [e for e in req.extra_vars if e.startswith("@")],
        "started": started_at.isoformat(),
        "duration_s": round(result.duration_s, 3),
        "rc": result.rc,
        "status": result.status,
        "interrupted": result.interrupted,
        "hosts": {
            r.host: {
                "ok": r.ok,
                "changed": r.changed,
                "failed": r.failed,
                "unreachable": r.unreachable,
                "skipped": r.skipped,
                "duration_s": round(r.duration_s, 3),
            }
            for r in result.recaps
        },
        "changes": [
            {"host": c.host, "task": c.label(), "action": c.action} for c in result.tracker.changes
        ],
    }


def write_summary(req: RunRequest, result: RunResult, started_at: datetime, strategy: str) -> Path:
    path = result.run_dir / "summary.json"
    path.write_text(json.dumps(summary(req, result, started_at, strategy), indent=2) + "\n", encoding="utf-8")
    return path
