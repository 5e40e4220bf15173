"""Where things live: the repository, its state directory and run artifacts."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path


def repo_root() -> Path:
    """The repository root (holds ansible.cfg); GPUPROV_ROOT overrides it."""
    env = os.environ.get("GPUPROV_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """`.gpuprov/` under the repository: run artifacts, fact cache, lab state."""
    return repo_root() / ".gpuprov"


def lab_inventory_dir() -> Path:
    return repo_root() / "inventories" / "lab"


def effective_inventories(inventories: Sequence[str]) -> list[Path]:
    """The inventories a run uses, resolved: the -i ones, else ANSIBLE_INVENTORY's, else none
    (ansible.cfg's default, the lab)."""
    if not inventories and os.environ.get("ANSIBLE_INVENTORY"):
        inventories = os.environ["ANSIBLE_INVENTORY"].split(",")
    return [Path(i).resolve() for i in inventories]


def is_lab(inventories: Sequence[str]) -> bool:
    """Whether a run with these -i inventories runs on the lab (none given, or the lab's own)."""
    lab = lab_inventory_dir().resolve()
    return all(p in (lab, lab / "hosts.yml") for p in effective_inventories(inventories))


def inventory_key(inventories: Sequence[str]) -> str:
    """A name for what one set of inventories holds on this controller (its lock, its fact cache):
    `lab` for the lab, else the first inventory's name and a hash of every inventory's resolved
    path, so two inventories never share one."""
    if is_lab(inventories):
        return "lab"
    resolved = effective_inventories(inventories)
    first = resolved[0]
    name = first.name if first.is_dir() else first.parent.name if first.stem in ("hosts", "inventory") else first.stem
    digest = hashlib.sha256("\n".join(sorted(map(str, resolved))).encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name) or 'inventory'}-{digest}"


def fact_cache_dir(inventories: Sequence[str]) -> Path:
    """The jsonfile fact cache of these inventories, kept across runs (ansible.cfg's timeout)."""
    return state_dir() / "facts" / inventory_key(inventories)


KEEP_RUNS = 200  # run directories kept (GPUPROV_KEEP_RUNS overrides): the newest, by their names' time


def prune_runs(keep: int | None = None) -> list[Path]:
    """Remove all but the `keep` newest run directories; returns what was removed."""
    import shutil

    keep = int(os.environ.get("GPUPROV_KEEP_RUNS", KEEP_RUNS)) if keep is None else keep
    runs = sorted((p for p in (state_dir() / "runs").glob("*") if p.is_dir()), key=lambda p: p.name, reverse=True)
    old = runs[max(keep, 0):]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def new_run_dir(command: str, now: datetime | None = None) -> Path:
    """A fresh `.gpuprov/runs/<UTC time>-<command>/` directory for one run's artifacts; the oldest
    beyond the retention (KEEP_RUNS, counting this one) are removed first."""
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
    keep = int(os.environ.get("GPUPROV_KEEP_RUNS", KEEP_RUNS))
    prune_runs(keep - 1)
    path = state_dir() / "runs" / f"{stamp}-{command}"
    path.mkdir(parents=True, exist_ok=False)
    return path
