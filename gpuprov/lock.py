"""One run at a time per inventory on this controller.

Two runs on one inventory race (model staging directories, the first CA's creation, the firewall's
view of the other hosts). Every command that runs playbooks holds an exclusive `flock` on
`.gpuprov/locks/<inventory key>.lock` for the whole run; the file says who holds it (pid, command,
start time), so a second run can name the holder. The kernel drops the lock when the holder exits,
however it exits: a stale lock file never blocks anyone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from gpuprov import paths


class LockHeld(Exception):
    """Another run holds the inventory's lock (its holder, as the lock file says, in the message)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another gpuprov run"
    return f"pid {info.get('pid', '?')} (gpuprov {info.get('command', '?')}, started {info.get('started', '?')})"


@contextmanager
def inventory_lock(inventories: list[str], command: str, wait_s: float = 0.0,
                   poll_s: float = 0.5) -> Iterator[Path]:
    """Hold the lock of `inventories` (the lab when empty) while the block runs.

    Waits up to `wait_s` seconds for a run that holds it, then raises LockHeld naming that run.
    """
    path = paths.state_dir() / "locks" / f"{paths.inventory_key(inventories)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise LockHeld(f"{_holder(path)} holds the lock of this inventory ({path})") from None
                time.sleep(poll_s)
        info = {"pid": os.getpid(), "command": command,
                "started": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock
