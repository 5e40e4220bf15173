"""Helpers for testinfra verifiers: run playbooks against Molecule's instances through gpuprov's
own runner (the code path of `gpuprov apply` and `gpuprov check`).

- `assert_no_changes_in_check_mode()`: the scenario's converge.yml with --check --diff must report
  zero changes on a converged host (the drift check).
- `run_role(role, extra_vars, ...)`: apply one role with extra variables, for bad-input and
  failure-path tests; returns the result and every event.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from gpuprov.runner import RunRequest, RunResult, run


def _inventory_dir() -> str:
    return str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)


def run_playbook(playbook: Path, extra_vars: dict[str, Any] | None = None, check: bool = False,
                 limit: str | None = None) -> tuple[RunResult, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    extra = [json.dumps(extra_vars)] if extra_vars else []
    req = RunRequest(
        command="molecule-verify",
        playbook=str(playbook.resolve()),
        inventories=[_inventory_dir()],
        limit=limit,
        extra_vars=extra,
        check=check,
        diff=check,
    )
    return run(req, on_event=lambda _t, e: events.append(e)), events


def run_role(role: str, extra_vars: dict[str, Any] | None = None, check: bool = False,
             limit: str | None = None, pre_roles: tuple[str, ...] = ()) -> tuple[RunResult, list[dict[str, Any]]]:
    play = [{"name": f"Apply {role}", "hosts": "all", "become": True,
             "roles": [*pre_roles, role]}]
    with tempfile.TemporaryDirectory(prefix="gpuprov-verify-") as tmp:
        path = Path(tmp) / "play.yml"
        path.write_text(yaml.safe_dump(play))
        return run_playbook(path, extra_vars, check, limit)


def failed_tasks(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(host, task, message) of every failed task."""
    out = []
    for e in events:
        if e.get("event") == "runner_on_failed" and not e["event_data"].get("ignore_errors"):
            d = e["event_data"]
            out.append((d.get("host", ""), d.get("task", ""), str((d.get("res") or {}).get("msg", ""))))
    return out


def check_mode_changes(playbook: str | None = None) -> list[str]:
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    converge = Path(playbook) if playbook else scenario / "converge.yml"
    result, _ = run_playbook(converge, check=True)
    assert result.rc == 0 and not result.failed, (
        f"check-mode run failed (rc {result.rc}); artifacts: {result.run_dir}"
    )
    return [f"{c.host}: {c.label()}" for c in result.tracker.changes]


def assert_no_changes_in_check_mode(playbook: str | None = None) -> None:
    changes = check_mode_changes(playbook)
    assert changes == [], "check mode after converge reports changes:\n" + "\n".join(changes)
