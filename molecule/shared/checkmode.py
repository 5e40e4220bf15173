"""Zero changes in check mode after converge: the drift check on a converged host.

Testinfra verifiers call `assert_no_changes_in_check_mode()`; it runs the scenario's converge
playbook with --check --diff against Molecule's inventory through gpuprov's own runner (the code
path of `gpuprov check`) and fails listing every task that would change.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpuprov.runner import RunRequest, run


def check_mode_changes(playbook: str | None = None) -> list[str]:
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    converge = Path(playbook) if playbook else scenario / "converge.yml"
    os.environ.setdefault("ANSIBLE_ROLES_PATH", str(Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]).parent))
    req = RunRequest(
        command="molecule-check",
        playbook=str(converge.resolve()),
        inventories=[str(Path(inventory).parent)],
        check=True,
        diff=True,
    )
    result = run(req)
    assert result.rc == 0 and not result.failed, (
        f"check-mode run failed (rc {result.rc}); artifacts: {result.run_dir}"
    )
    return [f"{c.host}: {c.label()}" for c in result.tracker.changes]


def assert_no_changes_in_check_mode(playbook: str | None = None) -> None:
    changes = check_mode_changes(playbook)
    assert changes == [], "check mode after converge reports changes:\n" + "\n".join(changes)
