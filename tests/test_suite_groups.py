"""scripts/test's one pytest run over pytest-xdist: each test's group, the groups' order by their
recorded durations, each group on one worker with its module's fixtures set up once, the groups'
table and record (tests/suite_groups.py), in real pytest-xdist runs of a small project; and every
Molecule scenario holding containers, networks and apt caches of its own, so that they may run side
by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import suite_groups

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "lib"))
import molecule_resources  # noqa: E402


def test_each_test_has_its_group() -> None:
    g = suite_groups.group_of
    assert g("tests/suite/test_molecule.py::test_scenario[tls/provided]") == "molecule:tls/provided"
    grouped = "tests/suite/test_molecule.py::test_scenario[tls/provided]@molecule:tls/provided"
    assert g(grouped) == "molecule:tls/provided"
    assert g("tests/suite/test_tools.py::test_lint[ansible-lint]") == "ansible-lint"
    assert g("tests/suite/test_tools.py::test_package[engine]") == "package:engine"
    assert g("tests/test_cli_lab.py::test_lab_status") == "tests/test_cli_lab.py"
    assert g("tests/test_x.py::test_y[a@b]") == "tests/test_x.py"
    assert g("tests/test_x.py::test_y[a@b]@tests/test_x.py") == "tests/test_x.py"
    assert g("tests/test_x.py::Class::test_y") == "tests/test_x.py"


def test_groups_start_longest_first_and_unrecorded_ones_before_them() -> None:
    ids = ["tests/test_a.py::t1", "tests/test_b.py::t1", "tests/test_a.py::t2", "tests/test_c.py::t1",
           "tests/test_new.py::t1", "tests/test_b.py::t2"]
    durations = {"tests/test_a.py": 5.0, "tests/test_b.py": 50.0, "tests/test_c.py": 20.0, "gone": 999.0}
    order = [ids[n] for n in suite_groups.ordered(ids, durations)]
    assert order == ["tests/test_new.py::t1", "tests/test_b.py::t1", "tests/test_b.py::t2", "tests/test_c.py::t1",
                     "tests/test_a.py::t1", "tests/test_a.py::t2"]


PROJECT_CONFTEST = """
import os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import suite_groups

def pytest_configure(config):
    plugin = suite_groups.SuitePlugin([Path({record!r})])
    config.pluginmanager.register(plugin, "gpuprov-suite-groups")
    config.pluginmanager.register(suite_groups.XdistPlugin(plugin.times), "gpuprov-suite-scheduler")
"""

# Each test appends `worker group-test start end` to a log; `fast` has a child process burn 0.3 s
# of processor time; the module fixture counts its setups.
PROJECT_MODULE = """
import os, subprocess, sys, time, pytest
LOG = {log!r}

@pytest.fixture(scope="module")
def once():
    with open(LOG + ".setups", "a") as f:
        f.write(__name__ + "\\n")

def _note(name, start):
    with open(LOG, "a") as f:
        f.write(f"{{os.environ.get('PYTEST_XDIST_WORKER')}} {{__name__}}-{{name}} {{start}} {{time.time()}}\\n")

@pytest.mark.parametrize("n", range(3))
def test_sleep(once, n):
    start = time.time()
    time.sleep({sleep})
    _note(f"sleep{{n}}", start)

def test_fast(once):
    start = time.time()
    subprocess.run([sys.executable, "-c", "import time\\nend = time.process_time() + 0.3\\n"
                    "while time.process_time() < end: pass"], check=True)
    _note("fast", start)
    assert {passes}
"""


def _project(tmp_path: Path, modules: dict[str, tuple[float, bool]]) -> tuple[Path, Path]:
    project, log = tmp_path / "project", tmp_path / "log"
    project.mkdir()
    (project / "conftest.py").write_text(PROJECT_CONFTEST.format(tests=str(ROOT / "tests"),
                                                                 record=str(tmp_path / "record.json")))
    for name, (sleep, passes) in modules.items():
        (project / f"{name}.py").write_text(PROJECT_MODULE.format(log=str(log), sleep=sleep, passes=passes))
    return project, log


def _pytest(project: Path, tmp_path: Path, workers: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUPROV_TEST_GROUPS": str(tmp_path / "groups.tsv"),
           "GPUPROV_TEST_RECORD": str(tmp_path / "record.json")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", str(workers),
                           "--dist", "loadgroup", "-q", *args, str(project)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_each_module_runs_on_one_worker_with_its_fixture_set_up_once(tmp_path: Path) -> None:
    project, log = _project(tmp_path, {"test_a": (0.2, True), "test_b": (0.2, True), "test_c": (0.2, True)})
    run = _pytest(project, tmp_path, 3)
    assert run.returncode == 0, run.stdout + run.stderr
    by_group: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        worker, test, _, _ = line.split()
        by_group.setdefault(test.split("-")[0], set()).add(worker)
    assert set(by_group) == {"test_a", "test_b", "test_c"}
    assert all(len(workers) == 1 for workers in by_group.values()), by_group
    assert len({w for ws in by_group.values() for w in ws}) > 1, "the groups were not spread over the workers"
    assert sorted(Path(f"{log}.setups").read_text().split()) == ["test_a", "test_b", "test_c"]


def test_the_groups_figures_and_record_and_the_next_runs_order(tmp_path: Path) -> None:
    """The table has each group's seconds and processor time; the record keeps the groups that
    passed (a failed one keeps its old figure); one worker then runs the groups longest first by it."""
    (tmp_path / "record.json").write_text(json.dumps({"test_fails.py": 123.0}))
    project, log = _project(tmp_path, {"test_short": (0.05, True), "test_long": (0.4, True),
                                       "test_fails": (0.05, False)})
    run = _pytest(project, tmp_path, 1)
    assert run.returncode == 1 and "1 failed, 11 passed" in run.stdout, run.stdout + run.stderr
    table = {line.split("\t")[0]: line.split("\t")[1:] for line in (tmp_path / "groups.tsv").read_text().splitlines()}
    assert set(table) == {"test_short.py", "test_long.py", "test_fails.py"}
    seconds = {group: float(row[0]) for group, row in table.items()}
    cpu = {group: float(row[1]) for group, row in table.items()}
    # Three tests asleep (0.4 s each in test_long, 0.05 s elsewhere) and one whose child process
    # burns 0.3 s of processor time, in every group: asleep counts in seconds only.
    assert seconds["test_long.py"] >= 1.4 and 0.4 <= seconds["test_short.py"] < 1.4, seconds
    assert all(0.25 <= c < 1.2 for c in cpu.values()), cpu
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["test_fails.py"] == 123.0 and record["test_long.py"] > record["test_short.py"] > 0
    # The next run: the failed group (123 s recorded) first, then long, then short.
    log.unlink()
    run = _pytest(project, tmp_path, 1)
    started = [line.split()[1].split("-")[0] for line in log.read_text().splitlines()]
    assert list(dict.fromkeys(started)) == ["test_fails", "test_long", "test_short"], started
    # A run stopped at its first failure (-x; pytest-xdist ends it as interrupted, exit status 2) is
    # no record: none is written.
    (tmp_path / "record.json").unlink()
    run = _pytest(project, tmp_path, 1, "-x")
    assert run.returncode == 2 and "stopping after 1 failures" in run.stdout + run.stderr, run.stdout
    assert not (tmp_path / "record.json").exists()


def test_a_groups_wait_and_unfinished_groups_are_not_its_time() -> None:
    """Time spent waiting for the base images comes off the group's seconds; a group whose tests did
    not all end (a crashed worker) is not recorded, nor is a failed one."""
    times = suite_groups.GroupTimes()
    times.expect(["a.py::t1", "a.py::t2", "b.py::t1", "c.py::t1"])
    wait = [(suite_groups.WAIT_PROPERTY, 30.0), (suite_groups.CPU_PROPERTY, 2.0)]
    for nodeid, when, seconds, failed, props in [
            ("a.py::t1", "setup", 1.0, False, []), ("a.py::t1", "call", 40.0, False, wait),
            ("a.py::t1", "teardown", 0.5, False, wait), ("a.py::t2", "call", 5.0, False, []),
            ("a.py::t2", "teardown", 0.5, False, []), ("b.py::t1", "call", 9.0, False, []),
            ("c.py::t1", "call", 3.0, True, []), ("c.py::t1", "teardown", 0.1, False, [])]:
        times.add(nodeid, when, seconds, failed, props)
    assert times.seconds["a.py"] == 1.0 + 40.0 + 0.5 + 5.0 + 0.5 - 30.0
    assert times.cpu["a.py"] == 2.0
    assert times.complete("a.py") and not times.complete("b.py") and times.complete("c.py")


def test_the_scenarios_a_run_is_limited_to(monkeypatch) -> None:
    from conftest import load_module

    suite = load_module("suite_test_molecule", "tests/suite/test_molecule.py")
    monkeypatch.setenv("GPUPROV_TEST_SCENARIOS", "tls node_exporter/release")
    assert suite._scenarios() == ["node_exporter/release", "tls/default", "tls/provided"]
    monkeypatch.setenv("GPUPROV_TEST_SCENARIOS", "")
    every = suite._scenarios()
    assert len(every) >= 20 and "prometheus/secured_targets" in every
    monkeypatch.setenv("GPUPROV_TEST_SCENARIOS", "tls/nope")
    with pytest.raises(AssertionError, match="no such scenario: tls/nope"):
        suite._scenarios()


def test_every_scenario_holds_containers_networks_and_caches_of_its_own() -> None:
    """The shared platforms are named after the scenario run (GPUPROV_SCENARIO, set to the
    scenario's id), so no two scenarios hold one container, network or apt cache and all may run
    side by side; a scenario with platforms of its own keeps its names."""
    held = {d: set(molecule_resources.resources(d))
            for d in sorted(p.parent for p in ROOT.glob("roles/*/molecule/*/molecule.yml"))}
    assert len(held) >= 20
    for a in held:
        for b in held:
            assert a == b or not held[a] & held[b], f"{a} and {b} share {held[a] & held[b]}"
    cuda, node = ROOT / "roles/cuda/molecule/default", ROOT / "roles/node_exporter/molecule/default"
    assert molecule_resources.scenario_id(cuda) == "cuda"
    assert molecule_resources.scenario_id(ROOT / "roles/tls/molecule/provided") == "tls-provided"
    assert {"container:gpuprov-cuda-debian12", "container:gpuprov-cuda-debian13", "network:gpuprov-cuda"} <= held[cuda]
    assert "container:gpuprov-node-exporter-debian13" in held[node]
    assert "container:gpuprov-fw-outsider" in held[ROOT / "roles/firewall/molecule/default"]
    assert molecule_resources.container_names(ROOT / "roles/tls/molecule/provided") == ["gpuprov-tls-provided-debian13"]


def _junit(path: Path, cases: dict[str, str]) -> None:
    """A JUnit report of `cases` (name -> pass, failure, error or skipped)."""
    body = "".join(f'<testcase classname="m" name="{name}">' + ("" if kind == "pass" else f"<{kind}/>")
                   + "</testcase>" for name, kind in cases.items())
    path.write_text(f'<testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')


def test_the_final_line_counts_the_packages_tests_in_place_of_the_test_that_ran_them(tmp_path: Path) -> None:
    from conftest import load_module

    counts = load_module("junit_counts", "scripts/lib/junit_counts.py")
    junit = tmp_path / "pytest.xml"
    _junit(junit, {"test_a": "pass", "test_b": "failure", "test_c": "skipped", "test_package[engine]": "pass",
                   "test_package[gateway]": "failure", "test_package[lint]": "failure"})
    _junit(tmp_path / "package-engine.xml", {"e1": "pass", "e2": "pass"})
    _junit(tmp_path / "package-gateway.xml", {"g1": "pass", "g2": "error"})
    _junit(tmp_path / "package-lint.xml", {"l1": "pass"})  # its tests passed, its linter did not
    passed, failed = counts.count(junit, tmp_path)
    assert passed == 1 + 2 + 1 + 1
    assert failed == ["m::test_b", "m::test_package[lint]", "gateway: m::g2"]
    # No pytest report (it broke first): only what the packages say.
    junit.unlink()
    assert counts.count(junit, tmp_path)[0] == 4
