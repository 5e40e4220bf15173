"""Ctrl-C (SIGINT) and SIGTERM during a run: ansible-playbook stops the way Ansible means it to.

ansible-runner starts ansible-playbook on a pseudo-terminal of its own, so a Ctrl-C on ours reaches
only this process; left alone, Python's KeyboardInterrupt unwinds ansible-runner and pexpect kills
ansible-playbook's process group, with no recap, no stats and no summary. Here the first signal is
passed on to ansible-playbook as SIGINT: Ansible stops its workers, prints "User interrupted
execution" and exits, and the run ends as usual (artifacts scrubbed, summary written, lock
released). A second signal cancels the run: ansible-runner kills ansible-playbook's process group
(`Interrupt.cancel` is its cancel callback, which also keeps ansible-runner from installing its own
signal handlers, whose first signal would kill at once).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType


@dataclass
class Interrupt:
    signal_name: str | None = None
    signals: int = 0
    forwarded_to: list[int] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return self.signal_name is not None

    def cancel(self) -> bool:
        """ansible-runner's cancel callback: kill only when asked a second time."""
        return self.signals >= 2


def children(pid: int | None = None) -> list[int]:
    """The direct children of `pid` (this process by default), from /proc."""
    pid = pid or os.getpid()
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return sorted(set(out))


def _signal(pids: list[int], sig: signal.Signals) -> list[int]:
    sent = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return sent


@contextmanager
def forward_interrupts() -> Iterator[Interrupt]:
    """While the block runs (in the main thread), SIGINT and SIGTERM go to the child processes."""
    state = Interrupt()

    def handler(signum: int, _frame: FrameType | None) -> None:
        state.signals += 1
        if state.signal_name is None:
            state.signal_name = signal.Signals(signum).name
            state.forwarded_to = _signal(children(), signal.SIGINT)

    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield state
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
