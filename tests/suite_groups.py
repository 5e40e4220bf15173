"""How scripts/test's one pytest run spreads over pytest-xdist's workers (`-n JOBS --dist loadgroup`).

- Every test is in one group, and a group runs on one worker, in order (`--dist loadgroup`, with
  the scheduler below in place of pytest-xdist's own): a Molecule
  scenario (`tests/suite/test_molecule.py`), each linter and each package's own tests
  (`tests/suite/test_tools.py`) are groups of their own; every other test is in its module's group,
  so a module's fixtures (the lab's) are set up once.
- Groups start longest first, by the seconds each took when it last passed: the record of the last
  full run on this machine (outside the checkout; rewritten only after a full run that ended by
  itself, for the groups whose every test ran and passed, less what they waited for), else the one
  kept in the repository (`tests/suite/durations.json`, from a full run here), which a fresh machine
  uses; a group in neither starts first, in collection order.
- Each group's seconds (its tests' setup, call and teardown, one after another on one worker) and
  processor time (the worker's own and its finished child processes': Ansible, Molecule, pytest in
  the packages' venvs) are summed for the slowest-steps table.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

MOLECULE = "tests/suite/test_molecule.py::test_scenario["
TOOLS = "tests/suite/test_tools.py::"
CPU_PROPERTY = "gpuprov_cpu_seconds"
# Seconds a test spent waiting for something another test makes (the base images): not its own.
WAIT_PROPERTY = "gpuprov_wait_seconds"


def group_of(nodeid: str) -> str:
    """The group of a test by its node id (a `@group` suffix, which pytest-xdist's own loadgroup
    adds on older pytest, left out): `molecule:ROLE/SCENARIO`, the tool's or package's name, or the
    test's module."""
    nodeid = nodeid.rsplit("@", 1)[0] if "@" in nodeid.rpartition("]")[2] else nodeid
    if nodeid.startswith(MOLECULE):
        return "molecule:" + nodeid[len(MOLECULE):].rstrip("]")
    if nodeid.startswith(TOOLS) and "[" in nodeid:
        kind, _, name = nodeid[len(TOOLS):].partition("[")
        name = name.rstrip("]")
        return f"package:{name}" if kind == "test_package" else name
    return nodeid.split("::", 1)[0]


def load_durations(paths: Iterable[Path]) -> dict[str, float]:
    """Seconds by group from the first of `paths` that exists (JSON: group -> seconds)."""
    for path in paths:
        if path.is_file():
            data = json.loads(path.read_text())
            return {str(k): float(v) for k, v in data.items()}
    return {}


def ordered(nodeids: list[str], durations: Mapping[str, float]) -> list[int]:
    """The indexes of `nodeids` with each group's tests together, groups longest first; groups
    without a recorded duration first, in the order they first appear; within a group, the
    collection order."""
    first_seen: dict[str, int] = {}
    for n, nodeid in enumerate(nodeids):
        first_seen.setdefault(group_of(nodeid), n)

    def key(group: str) -> tuple[int, float, int]:
        known = group in durations
        return (1 if known else 0, -durations.get(group, 0.0), first_seen[group])

    rank = {group: r for r, group in enumerate(sorted(first_seen, key=key))}
    return sorted(range(len(nodeids)), key=lambda n: (rank[group_of(nodeids[n])], n))


def processor_seconds() -> float:
    """User and system time of this process and of its children that have been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class GroupTimes:
    """Seconds, processor seconds and outcome by group, from the test reports; which tests each
    group has (`expect`) and which of them ended (a teardown report), so that a group cut off
    (an interrupted run, a crashed worker) is never recorded as passed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.failed: set[str] = set()
        self.expected: dict[str, set[str]] = {}
        self.ended: dict[str, set[str]] = {}

    def expect(self, nodeids: Iterable[str]) -> None:
        for nodeid in nodeids:
            self.expected.setdefault(group_of(nodeid), set()).add(nodeid)

    def add(self, nodeid: str, when: str, duration: float, failed: bool,
            properties: Iterable[tuple[str, object]]) -> None:
        group = group_of(nodeid)
        self.seconds[group] = self.seconds.get(group, 0.0) + duration
        for name, value in properties if when == "teardown" else ():
            if name == CPU_PROPERTY and isinstance(value, (int, float)):
                self.cpu[group] = self.cpu.get(group, 0.0) + float(value)
            if name == WAIT_PROPERTY and isinstance(value, (int, float)):
                self.seconds[group] -= float(value)
        if failed:
            self.failed.add(group)
        if when == "teardown":
            self.ended.setdefault(group, set()).add(nodeid)

    def complete(self, group: str) -> bool:
        """Every test the group has ended (and it has tests)."""
        return bool(self.expected.get(group)) and self.expected[group] <= self.ended.get(group, set())

    def write_table(self, path: Path) -> None:
        """NAME<TAB>SECONDS<TAB>CPU per group (scripts/test's slowest-steps table)."""
        path.write_text("".join(f"{g}\t{s:.1f}\t{self.cpu.get(g, 0.0):.1f}\n"
                                for g, s in sorted(self.seconds.items())))

    def record(self, path: Path) -> None:
        """The groups that passed whole, over the earlier record (a failed or unfinished group keeps
        its old figure)."""
        old = load_durations([path])
        new = {g: round(s, 1) for g, s in self.seconds.items() if g not in self.failed and self.complete(g)}
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dict(sorted({**old, **new}.items())), indent=1) + "\n")
        tmp.replace(path)


class SuitePlugin:
    """The hooks (tests/conftest.py registers it): groups and their order at collection, each test's
    processor time in its teardown report, and on the controller each group's figures, written at
    the end: the table to GPUPROV_TEST_GROUPS and, after a full run, the record to GPUPROV_TEST_RECORD."""

    def __init__(self, durations: list[Path]) -> None:
        self.durations = durations
        self.times = GroupTimes()
        self.cpu_at_start: dict[str, float] = {}

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        order = ordered([item.nodeid for item in items], load_durations(self.durations))
        items[:] = [items[n] for n in order]

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Without pytest-xdist the tests are collected here (with it, XdistPlugin learns them)."""
        self.times.expect(item.nodeid for item in session.items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.cpu_at_start[item.nodeid] = processor_seconds()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]):
        report = yield
        start = self.cpu_at_start.pop(item.nodeid, None) if report.when == "teardown" else None
        if start is not None:
            report.user_properties = [*report.user_properties, (CPU_PROPERTY, round(processor_seconds() - start, 2))]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.times.add(report.nodeid, report.when, report.duration, report.failed, report.user_properties)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the controller writes
            return
        if table := os.environ.get("GPUPROV_TEST_GROUPS"):
            self.times.write_table(Path(table))
        # Only a run that ended by itself (all passed, or tests failed) is a record; one interrupted,
        # stopped early or broken is not.
        finished = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and not (
            session.shouldstop or session.shouldfail)
        if (record := os.environ.get("GPUPROV_TEST_RECORD")) and finished:
            self.times.record(Path(record))


def group_scheduling() -> type:
    """pytest-xdist's scope scheduler with our groups as its scopes: a group goes to one worker as a
    whole, in the collection's order (no reordering by size), and a worker down to its last two
    tests gets the next group. (pytest-xdist 3.8's own `loadgroup` reads `xdist_group` marks through
    the node ids, which pytest 9.2 no longer lets it change: pytest-xdist issue #1386.)"""
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling


class XdistPlugin:
    """`--dist loadgroup` with our scheduler (registered where pytest-xdist is): the groups in the
    collection's order, and each group's tests, as the workers collected them, for the record."""

    def __init__(self, times: GroupTimes) -> None:
        self.times = times

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: object) -> object | None:
        if config.getvalue("dist") != "loadgroup":
            return None
        config.option.loadscopereorder = False  # the order is the collection's (ours)
        return group_scheduling()(config, log)

    def pytest_xdist_node_collection_finished(self, node: object, ids: list[str]) -> None:
        self.times.expect(ids)
