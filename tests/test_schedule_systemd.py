"""`gpuprov schedule` on a controller that runs systemd: a Debian 12 systemd container (the test
image, the one container recipe) holds this checkout and the controller's venv at fixed paths.
There `schedule install` enables and starts the timer itself, systemd runs the drift service as
written (hardening included: PrivateTmp, ProtectSystem), the run that finds drift ends as a
success with exit status 2 and leaves its report and metrics, and `schedule remove` takes the
timer away. The drift run's hosts are the container itself (a local connection): what is timed
here is the schedule, not a fleet."""

from __future__ import annotations

import json
import shlex
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from gpuprov import lab, systemd_container

CHECKOUT = "/opt/gpuprov"  # not under /tmp: the service has a private /tmp (PrivateTmp=yes)
VENVS = Path.home() / ".cache" / "gpuprov" / "venvs"


def _sh(container, script: str, timeout: int = 600) -> tuple[int | None, str]:
    return lab._exec(container, ["timeout", str(timeout), "sh", "-c", script])


@pytest.fixture
def controller(docker_client, tmp_path):
    image = "gpuprov/debian12-systemd:latest"
    kwargs = systemd_container.docker_sdk_kwargs(tmp_path / "apt")
    # The checkout read-only, its state directory (runs, facts, locks, drift history, this test's
    # inventory) a fresh one: nothing of the test is left in the checkout.
    state = tmp_path / "state"
    state.mkdir()
    (ROOT / ".gpuprov").mkdir(exist_ok=True)  # the mount point, in a checkout mounted read-only
    kwargs["volumes"].update({
        str(ROOT): {"bind": CHECKOUT, "mode": "ro"},
        str(state): {"bind": f"{CHECKOUT}/.gpuprov", "mode": "rw"},
        str(VENVS): {"bind": str(VENVS), "mode": "ro"},
    })
    # The venv's own Python: Debian's is in the image too; another (pyenv's) is lent at its path.
    if not sys.base_prefix.startswith("/usr"):
        kwargs["volumes"][sys.base_prefix] = {"bind": sys.base_prefix, "mode": "ro"}
    name = f"gpuprov-schedule-{uuid.uuid4().hex[:8]}"
    container = docker_client.containers.run(image=image, name=name, hostname=name, detach=True,
                                             network_mode="none", **kwargs)
    try:
        lab.wait_for_systemd(container)
        yield container, state
    finally:
        container.remove(force=True)


def test_the_timer_is_enabled_and_its_drift_service_runs_under_systemd(controller):
    controller, state_dir = controller
    work = f"{CHECKOUT}/.gpuprov/test-schedule"
    inventory = {"all": {"hosts": {"ctl": {"ansible_connection": "local",
                                           "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}
    play = [{"name": "Something to drift", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Write a file", "ansible.builtin.copy": {"dest": "/root/drift-probe", "content": "x\n",
                                                          "mode": "0644"}}]}]
    # Written here, read there (the state directory is the same on both sides).
    (state_dir / "test-schedule" / "fleet").mkdir(parents=True)
    (state_dir / "test-schedule" / "fleet" / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (state_dir / "test-schedule" / "site.yml").write_text(yaml.safe_dump(play))
    gpuprov = f"{CHECKOUT}/scripts/gpuprov"
    target = f"-i {work}/fleet/hosts.yml"
    # A date far ahead: the timer is scheduled, and never fires during the test.
    rc, out = _sh(controller, f"{gpuprov} schedule install {target} --playbook {work}/site.yml "
                              "--on-calendar 2099-01-01")
    assert rc == 0, out
    units = sorted(Path(p).name for p in _sh(controller, "ls /etc/systemd/system/gpuprov-drift-*")[1].split())
    assert len(units) == 2 and units[0].endswith(".service") and units[1].endswith(".timer"), units
    service, timer = units
    assert _sh(controller, f"systemctl is-enabled {timer}")[1].strip() == "enabled"
    assert _sh(controller, f"systemctl is-active {timer}")[1].strip() == "active"
    rc, out = _sh(controller, f"systemctl show -P NextElapseUSecRealtime {timer}")
    assert rc == 0 and out.strip() not in ("", "n/a"), out  # scheduled
    assert _sh(controller, f"systemctl show -P Triggers {timer}")[1].strip() == service

    # What the timer starts, started now: a oneshot, so `start` returns when the run ended.
    started = time.time()
    rc, out = _sh(controller, f"systemctl start {service}")
    assert rc == 0, out + _sh(controller, f"journalctl -u {service} --no-pager | tail -40")[1]
    show = dict(ln.split("=", 1) for ln in
                _sh(controller, f"systemctl show -p Result -p ExecMainStatus {service}")[1].split())
    assert show == {"Result": "success", "ExecMainStatus": "2"}, show  # drift found: a result, not a failure
    unit = _sh(controller, f"cat /etc/systemd/system/{service}")[1]
    argv = shlex.split(next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))[len("ExecStart="):])
    report, metrics = argv[argv.index("-o") + 1], argv[argv.index("--metrics-file") + 1]
    rc, out = _sh(controller, f"cat {report}")
    assert rc == 0 and [h["status"] for h in json.loads(out)["hosts"]] == ["drifted"], out
    rc, out = _sh(controller, f"cat {metrics}")
    assert rc == 0 and "gpuprov_drift_last_run_timestamp_seconds{" in out, out
    stamp = next(float(ln.rsplit(" ", 1)[1]) for ln in out.splitlines()
                 if ln.startswith("gpuprov_drift_last_run_timestamp_seconds{"))
    assert stamp >= started - 5, (stamp, started)
    # The service's own journal shows the run; check mode changed nothing on the host.
    assert f"drift report: {report}" in _sh(controller, f"journalctl -u {service} --no-pager")[1]
    assert _sh(controller, "test -e /root/drift-probe")[0] != 0

    rc, out = _sh(controller, f"{gpuprov} schedule remove {target}")
    assert rc == 0, out
    assert _sh(controller, "ls /etc/systemd/system/gpuprov-drift-* 2>/dev/null")[1].strip() == ""
    assert _sh(controller, f"systemctl is-active {timer}")[1].strip() in ("inactive", "unknown")
