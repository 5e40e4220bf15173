"""Where things live: the repository, its state directory and run artifacts."""

from __future__ import annotations

import os
from datetime import datetime, timezone
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


def new_run_dir(command: str, now: datetime | None = None) -> Path:
    """A fresh `.gpuprov/runs/<UTC time>-<command>/` directory for one run's artifacts."""
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
    path = state_dir() / "runs" / f"{stamp}-{command}"
    path.mkdir(parents=True, exist_ok=False)
    return path
