"""A command of the suite's own tests (a scenario, a tool, a package, the base images) run with its
output in .gpuprov/test-logs/<name>.log (GPUPROV_TEST_LOGS), where a failure's message points."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOGS = Path(os.environ.get("GPUPROV_TEST_LOGS", ROOT / ".gpuprov" / "test-logs"))


def run_logged(name: str, argv: list[str], cwd: Path = ROOT, env: Mapping[str, str] | None = None) -> tuple[int, Path]:
    """Run `argv` (no input) with its output in LOGS/<name>.log; its exit status and that log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    with log.open("wb") as out:
        rc = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, check=False).returncode
    return rc, log


def last_lines(log: Path, n: int) -> list[str]:
    return log.read_text(errors="replace").splitlines()[-n:]
