"""The linters and the host-side packages' own tests, one test each and each a group of its own
(tests/suite_groups.py), so pytest-xdist runs them beside the long tests: yamllint, ansible-lint
(production profile; it runs `ansible-playbook --syntax-check` on every playbook and role), ruff over
the repository's Python but packages/* (which lint their own), mypy over the files pyproject.toml's
[tool.mypy] names, and each packages/<name>/scripts/test (its own venv, ruff and pytest; its JUnit
report in .gpuprov/test-logs/package-<name>.xml, whose tests scripts/test counts). Each one's output
goes to .gpuprov/test-logs/<name>.log and a failure shows its last lines."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOGS = Path(os.environ.get("GPUPROV_TEST_LOGS", ROOT / ".gpuprov" / "test-logs"))
LINTERS = {
    "yamllint": ["yamllint", "--strict", "."],
    "ansible-lint": ["ansible-lint", "--profile", "production", "--offline", "-q"],
    "ruff": ["ruff", "check", "."],
    "mypy": ["mypy"],
}
PACKAGES = sorted(p.parents[1].name for p in ROOT.glob("packages/*/scripts/test") if os.access(p, os.X_OK))


def _run(name: str, argv: list[str]) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    with log.open("wb") as out:
        rc = subprocess.run(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            check=False).returncode
    lines = log.read_text(errors="replace").splitlines()
    assert rc == 0, "\n".join([f"{' '.join(argv)} exited {rc}; its last lines ({log}):", *lines[-60:]])


@pytest.mark.parametrize("linter", sorted(LINTERS))
def test_lint(linter: str) -> None:
    _run(linter, LINTERS[linter])


@pytest.mark.parametrize("package", PACKAGES)
def test_package(package: str) -> None:
    junit = LOGS / f"package-{package}.xml"
    junit.unlink(missing_ok=True)
    _run(f"package_{package}", [str(ROOT / "packages" / package / "scripts" / "test"), str(junit)])
    assert junit.is_file(), f"packages/{package}/scripts/test wrote no JUnit report"
