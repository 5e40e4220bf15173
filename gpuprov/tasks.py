"""Count the tasks a playbook run will go through (`ansible-playbook --list-tasks`)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import ansible_runner

from gpuprov.runner import RunRequest, runner_kwargs

_TASK_LINE = re.compile(r"^ {6}(?:(?P<role>[\w.-]+) : )?\S.*\tTAGS: \[")
_PLAY_LINE = re.compile(r"^  play #\d+ ")


def count_listed_tasks(listing: str) -> int:
    """Tasks one host goes through, from `--list-tasks` output.

    The listing has one line per task; a run adds one fact-gathering task per play and one
    argument-spec validation per role, which the listing does not show. Handlers are not counted.
    """
    tasks = 0
    plays = 0
    roles: set[str] = set()
    for line in listing.splitlines():
        if _PLAY_LINE.match(line):
            plays += 1
        m = _TASK_LINE.match(line)
        if m:
            tasks += 1
            if m.group("role"):
                roles.add(m.group("role"))
    return tasks + plays + len(roles)


def task_total(req: RunRequest, inventories: Sequence[str] = ()) -> int | None:
    """How many tasks `req` lists for one host; None when the listing fails."""
    if not req.playbook:
        return None
    with tempfile.TemporaryDirectory(prefix="gpuprov-list-") as tmp:
        listing = RunRequest(**{**req.__dict__, "inventories": list(inventories)})
        kwargs = runner_kwargs(listing, Path(tmp), extra_args=["--list-tasks"])
        r = ansible_runner.run(**kwargs)
        if r.rc != 0:
            return None
        return count_listed_tasks(r.stdout.read())
