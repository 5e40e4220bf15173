"""`molecule test` of every Molecule scenario (roles/<role>/molecule/<scenario>/), one test each and
each a group of its own (tests/suite_groups.py), so pytest-xdist runs them side by side with the
rest of the suite: every scenario's containers, networks and apt caches are its own (the shared
platforms are named after the scenario run, GPUPROV_SCENARIO; tests/test_systemd_container.py
checks that no two scenarios share one). GPUPROV_TEST_SCENARIOS (`ROLE` or `ROLE/SCENARIO`, space
separated) limits them, as `scripts/test --scenario` does.

Molecule's test sequence (.config/molecule/config.yml) starts at create, without a destroy first:
each run gets a new Molecule state directory (Molecule's own is kept per role name across runs, and
a broken run's "created" would skip create), and the scenario's containers that a broken earlier run
left behind are removed by name first. Its output goes to .gpuprov/test-logs/molecule_<role>_<scenario>.log;
a failure shows what failed (pytest's FAILED and E lines, Ansible's failed tasks) and its last lines.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import suite_groups
from filelock import FileLock
from logged import LOGS, ROOT, last_lines, run_logged

sys.path.insert(0, str(ROOT / "scripts" / "lib"))
import molecule_resources  # noqa: E402

WHAT_FAILED = re.compile(r"^(FAILED|ERROR) |^E   |^fatal: \[|^failed: \[|^[^ ]+\.py:[0-9]+: [A-Za-z]*Error")


def _scenarios() -> list[str]:
    found = sorted(f"{p.parents[2].name}/{p.parent.name}" for p in ROOT.glob("roles/*/molecule/*/molecule.yml"))
    wanted = os.environ.get("GPUPROV_TEST_SCENARIOS", "").split()
    if not wanted:
        return found
    unknown = [w for w in wanted if not any(s == w or s.split("/")[0] == w for s in found)]
    assert not unknown, f"no such scenario: {' '.join(unknown)} (there are {' '.join(found)})"
    return [s for s in found if s in wanted or s.split("/")[0] in wanted]


@pytest.fixture(scope="session")
def base_images(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The scenarios' starting images, the plain ones with the base role applied
    (scripts/build-base-images: rebuilt only when the role or the plain image changed), made once
    per run by the first scenario that needs them while the others on them wait (a lock in the
    directory the run's workers share); the tests that need none run meanwhile."""
    # pytest-xdist's workers of one run share their base directory's parent; without it, the run's own.
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
    shared = tmp_path_factory.getbasetemp().parent if run else tmp_path_factory.getbasetemp()
    result, log = shared / f"base-images-{run}.rc", LOGS / "base-images.log"
    with FileLock(str(shared / f"base-images-{run}.lock")):
        if not result.exists():
            rc, log = run_logged("base-images", [str(ROOT / "scripts" / "build-base-images")])
            result.write_text(str(rc))
    if result.read_text() != "0":
        pytest.fail(f"scripts/build-base-images failed: {log}\n" + "\n".join(last_lines(log, 20)))


def _what_failed(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    failed = [line for line in lines if WHAT_FAILED.search(line)][-80:]
    return "\n".join(["what failed:", *failed, f"last lines ({log}):", *lines[-12:]])


@pytest.mark.docker
@pytest.mark.parametrize("scenario", _scenarios())
def test_scenario(scenario: str, request: pytest.FixtureRequest) -> None:
    role, name = scenario.split("/")
    directory = ROOT / "roles" / role / "molecule" / name
    if molecule_resources.uses_base_images(directory):
        # Building or waiting for them is not the scenario's own time (tests/suite_groups.py).
        started = time.monotonic()
        request.getfixturevalue("base_images")
        request.node.user_properties.append((suite_groups.WAIT_PROPERTY, round(time.monotonic() - started, 1)))
    sid = molecule_resources.scenario_id(directory)
    leftovers = molecule_resources.container_names(directory)
    subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True, check=False)
    state = tempfile.mkdtemp(prefix="gpuprov-molecule.")
    env = {**os.environ, "GPUPROV_SCENARIO": sid, "MOLECULE_EPHEMERAL_DIRECTORY": state}
    try:
        rc, log = run_logged(f"molecule_{role}_{name}", ["molecule", "test", "-s", name], cwd=ROOT / "roles" / role,
                             env=env)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert rc == 0, f"molecule test of {scenario} exited {rc}\n{_what_failed(log)}"
