"""Count the tasks a playbook run will go through (`ansible-playbook --list-tasks`)."""

from __future__ import annotations

import re
import tempfile
from typing import Sequence

import ansible_runner

from gpuprov import paths
from gpuprov.runner import RunRequest, ansible_env, build_cmdline

_TASK_LINE = re.compile(r"^ {6}\S.*\tTAGS: \[")


def count_listed_tasks(listing: str) -> int:
    """Number of task lines in `--list-tasks` output (each ends with a TAGS field)."""
    return sum(1 for line in listing.splitlines() if _TASK_LINE.match(line))


def task_total(req: RunRequest, inventories: Sequence[str] = ()) -> int | None:
    """How many tasks `req` lists for one host; None when the listing fails."""
    if not req.playbook:
        return None
    root = paths.repo_root()
    with tempfile.TemporaryDirectory(prefix="gpuprov-list-") as tmp:
        cmdline = build_cmdline(req) + ["--list-tasks"]
        kwargs = dict(
            private_data_dir=tmp,
            project_dir=str(root),
            playbook=str(root / req.playbook),
            envvars=ansible_env(),
            cmdline=" ".join(cmdline),
            suppress_env_files=True,
            quiet=True,
        )
        if req.limit:
            kwargs["limit"] = req.limit
        if inventories:
            kwargs["inventory"] = list(inventories)
        r = ansible_runner.run(**kwargs)
        if r.rc != 0:
            return None
        return count_listed_tasks(r.stdout.read())
