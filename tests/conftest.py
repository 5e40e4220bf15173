"""Shared fixtures: the repository root, the gpuprov entry script, Docker availability."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import suite_groups

ROOT = Path(__file__).resolve().parent.parent
GPUPROV = ROOT / "scripts" / "gpuprov"
# The groups' durations kept in the repository (a fresh machine's order; tests/suite_groups.py).
DURATIONS = ROOT / "tests" / "suite" / "durations.json"


def load_module(name: str, relative_path: str) -> ModuleType:
    """A Python file outside the gpuprov package (a role's module or filter, a script's library),
    imported by its path in the repository."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    assert spec is not None and spec.loader is not None, relative_path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_gpuprov(*args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run scripts/gpuprov for real, as a user would (not a TTY: plain progress lines)."""
    return subprocess.run(
        [str(GPUPROV), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_local_inventory(path: Path, group: str = "all") -> Path:
    """An inventory file with localhost (local connection, this interpreter) in `group`."""
    import sys

    import yaml

    host = {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}
    body = {"all": {"hosts": host}} if group == "all" else {group: {"hosts": host}}
    path.write_text(yaml.safe_dump(body))
    return path


def run_local_cases(base: Path, command: str, hosts: dict[str, dict], tasks: list[dict]) -> dict[str, list[dict]]:
    """Role logic over many cases in one Ansible run on localhost: each case a host (a local alias
    with its own variables; `gpuprov_test_local` becomes its `ansible_local`, as the gpu_facts role
    leaves it), the tasks run through gpuprov's runner under Mitogen's strategy (opt-in outside the
    lab: one Python per host for the run, Ansible's start-up once). Returns each host's events."""
    import sys

    import yaml

    from gpuprov.runner import RunRequest, run

    inventory = {name: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, **variables}
                 for name, variables in hosts.items()}
    # An inventory variable named ansible_local would lose to the facts' own (empty here).
    fact = {"name": "Set the host's local facts",
            "ansible.builtin.set_fact": {"ansible_local": "{{ gpuprov_test_local }}"}}
    play = [{"name": command, "hosts": "all", "gather_facts": False, "tasks": [fact, *tasks]}]
    (base / "play.yml").write_text(yaml.safe_dump(play))
    (base / "hosts.yml").write_text(yaml.safe_dump({"gpu_servers": {"hosts": inventory}}))
    events: list[dict] = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ANSIBLE_STRATEGY", "mitogen_linear")
        run(RunRequest(command=command, playbook=str(base / "play.yml"), inventories=[str(base / "hosts.yml")]),
            on_event=lambda _t, e: events.append(e))
    by_host = {name: [e for e in events if e.get("event_data", {}).get("host") == name] for name in hosts}
    # Every case ran (a host with no event would pass any check of what it did not do).
    assert all(by_host.values()), [name for name, mine in by_host.items() if not mine]
    return by_host


def failed_tasks_of(events: list[dict]) -> list[dict]:
    """The event data of a host's failed tasks."""
    return [e["event_data"] for e in events if e.get("event") == "runner_on_failed"]


def verify_rows(stdout: str) -> dict[tuple[str, str], tuple[str, str]]:
    """{(host, check): (result, found)} from `gpuprov verify`'s table."""
    lines = stdout.splitlines()
    start = next(n for n, ln in enumerate(lines) if ln.startswith("host ") and " check " in ln) + 2
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip(), maxsplit=3) + [""]
        rows[(cells[0], cells[1])] = (cells[2], cells[3])
    return rows


def pytest_configure(config) -> None:
    """Every test in its group for pytest-xdist, the groups longest first (tests/suite_groups.py):
    by the record of the last full run here, else the repository's."""
    cache = Path(os.environ.get("GPUPROV_CACHE", "/var/cache/gpuprov"))
    plugin = suite_groups.SuitePlugin([cache / "test-durations.json", DURATIONS])
    config.pluginmanager.register(plugin, "gpuprov-suite-groups")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(suite_groups.XdistPlugin(plugin.times), "gpuprov-suite-scheduler")


def pytest_collection_modifyitems(config, items) -> None:
    """Every test on the docker_client fixture is a `docker` test (`scripts/test --quick` leaves
    them out)."""
    for item in items:
        if "docker_client" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


# The lab's first failing test carries its GPU host's journal of Triton, its canary and recovery and
# the gateway (a Triton that stopped serving fails every test after it; the first says why). The
# lines start with "journal| ", which scripts/test's summary of a failing step shows.
LAB_GPU_HOST = "gpuprov-lab-gpu1"
LAB_UNITS = ("gpuprov-triton.service", "gpuprov-triton-canary.service", "gpuprov-triton-recover.service",
             "gpuprov-gateway.service")
_lab_journal_shown: list[bool] = []


def _lab_journal() -> str:
    try:
        import docker

        host = docker.from_env().containers.get(LAB_GPU_HOST)

        def output(argv: list[str]) -> str:
            out = host.exec_run(argv).output
            assert isinstance(out, bytes)  # not streamed
            return out.decode(errors="replace")

        units = [arg for unit in LAB_UNITS for arg in ("-u", unit)]
        state = output(["systemctl", "show", "-p", "ActiveState", "-p", "SubState", "-p", "NRestarts",
                        "gpuprov-triton.service"])
        # Triton's Python backend keeps its requests in /dev/shm (64 MiB in a container), where a
        # killed server leaves its regions behind.
        shm = output(["sh", "-c", "df -k /dev/shm; ls -la /dev/shm | tail -n 8"])
        log = output(["journalctl", "--no-pager", "-o", "short-precise", "-n", "200", *units])
        # Triton's start-up tables say nothing of a failure; the units' state and /dev/shm come last,
        # where the tail of a CI log keeps them.
        lines = [line for line in log.splitlines() if not re.search(r"\]: [|+]", line)][-60:]
        text = "\n".join(lines) + "\n" + state + shm
    except Exception as exc:  # noqa: BLE001 - a diagnostic must never fail the report
        text = f"(no journal: {type(exc).__name__}: {exc})"
    return "\n".join("journal| " + line for line in text.splitlines())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if (report.when == "call" and report.failed and item.path.name == "test_cli_lab.py"
            and not _lab_journal_shown):
        _lab_journal_shown.append(True)
        report.sections.append((f"{LAB_GPU_HOST}: systemd's journal of {', '.join(LAB_UNITS)}", _lab_journal()))
    return report


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine
        pytest.fail(f"these tests need a running Docker engine (scripts/test starts one): {exc}")
    for image in ("gpuprov/debian12-systemd:latest", "gpuprov/debian13-systemd:latest"):
        try:
            client.images.get(image)
        except Exception:  # noqa: BLE001
            pytest.fail(f"missing test image {image}: run scripts/build-test-images")
    return client


def first_failure(events: list[dict]) -> tuple[str, str]:
    """(task, message) of the first task that failed in a run's events (ignored failures left out)."""
    failed = [e["event_data"] for e in events if e.get("event") == "runner_on_failed"
              and not e["event_data"].get("ignore_errors")]
    assert failed, "no task failed"
    return failed[0]["task"], failed[0]["res"].get("msg", "")
