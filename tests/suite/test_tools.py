"""The linters and the host-side packages' own tests, one test each and each a group of its own
(tests/suite_groups.py), so pytest-xdist runs them beside the long tests: yamllint, ansible-lint
(production profile; it runs `ansible-playbook --syntax-check` on every playbook and role), ruff over
the repository's Python but packages/* (which lint their own), mypy over the files pyproject.toml's
[tool.mypy] names, and each packages/<name>/scripts/test (its own venv, ruff and pytest; its JUnit
report in .gpuprov/test-logs/package-<name>.xml, whose tests scripts/test counts). Each one's output
goes to .gpuprov/test-logs/<name>.log and a failure shows its last lines."""

from __future__ import annotations

import os

import pytest
from logged import LOGS, ROOT, last_lines, run_logged

LINTERS = {
    "yamllint": ["yamllint", "--strict", "."],
    "ansible-lint": ["ansible-lint", "--profile", "production", "--offline", "-q"],
    "ruff": ["ruff", "check", "."],
    "mypy": ["mypy"],
}
PACKAGES = sorted(p.parents[1].name for p in ROOT.glob("packages/*/scripts/test") if os.access(p, os.X_OK))


def _run(name: str, argv: list[str]) -> None:
    rc, log = run_logged(name, argv)
    assert rc == 0, "\n".join([f"{' '.join(argv)} exited {rc}; its last lines ({log}):", *last_lines(log, 60)])


@pytest.mark.parametrize("linter", sorted(LINTERS))
def test_lint(linter: str) -> None:
    _run(linter, LINTERS[linter])


@pytest.mark.parametrize("package", PACKAGES)
def test_package(package: str) -> None:
    junit = LOGS / f"package-{package}.xml"
    junit.unlink(missing_ok=True)
    _run(f"package_{package}", [str(ROOT / "packages" / package / "scripts" / "test"), str(junit)])
    assert junit.is_file(), f"packages/{package}/scripts/test wrote no JUnit report"
