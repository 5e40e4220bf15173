"""The GPU exporter on GPU-less containers. Left to the gpu fact (auto) it is not installed, and
the role says why; forced on, the pinned nvitop-exporter is installed in its venv and runs under
its hardened unit, where it finds no NVML (no driver in a container), which its log shows. Real
GPU readings are checked against a recording from an H200 (tests/test_alert_metrics.py)."""

from __future__ import annotations

import os
import re

from gpuprov_molecule import (
    EXPOSURE_LIMIT,
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    exposure,
    failed_tasks,
    instance,
    role_verify,
    run_role,
)

from gpuprov.verify import FAIL, PASS

AUTO, FORCED = instance("gpuprov-gpuexp-auto"), instance("gpuprov-gpuexp-forced")
VENV = "/opt/gpuprov/gpu-exporter/venv"
UNIT = "gpuprov-gpu-exporter"
WHEELS = {"gpu_exporter_controller_wheelhouse": f"{os.environ.get('GPUPROV_CACHE', '/var/cache/gpuprov')}/wheelhouse"}


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_roles_own_verify_says_where_the_exporter_belongs():
    """The role's own checks (tasks/verify.yml: what `gpuprov verify` runs on a lab or fleet) with
    the scenario's settings, on the converged hosts: on auto without GPUs the exporter is absent,
    which passes; forced on without a driver it stops at the missing NVML, which verify must
    report as a failure (on a GPU host that is a broken exporter)."""
    found = role_verify("gpu_exporter")
    assert {c.name for c in found} == {"GPU exporter: running where the gpu fact shows GPUs"}, found
    checks = {c.host: c for c in found}
    assert {h: c.result for h, c in checks.items()} == {"gpuprov-gpuexp-auto": PASS, "gpuprov-gpuexp-forced": FAIL}
    assert len(found) == 2, found
    assert "not deployed: the gpu fact shows 0 GPU(s)" in checks["gpuprov-gpuexp-auto"].found
    # Without NVML the exporter exits and systemd restarts it every 5 s, so the unit's state at the
    # moment of the check is any of its restart loop's states, "active" included while Python starts.
    # What verify must find either way is that nothing serves the metrics.
    forced = checks["gpuprov-gpuexp-forced"].found
    assert re.fullmatch(rf"{UNIT}\.service is (active|activating|failed|inactive), metrics: HTTP -1", forced), forced


def test_auto_installs_nothing_without_gpus_and_says_why():
    assert not AUTO.file(VENV).exists
    assert not AUTO.file(f"/etc/systemd/system/{UNIT}.service").exists
    result, events = run_role("gpu_exporter", WHEELS, pre_roles=("gpu_facts",), limit="gpuprov-gpuexp-auto")
    assert result.rc == 0 and result.recaps[0].changed == 0
    said = [e["event_data"]["res"].get("msg", "") for e in events
            if e.get("event") == "runner_on_ok"
            and e["event_data"].get("task") == "Say why there is no GPU exporter here"]
    assert said and "the gpu fact shows 0 GPU(s)" in said[0]


def test_forced_on_the_pinned_exporter_is_installed_from_the_controllers_wheels():
    assert FORCED.run("cd /opt/gpuprov/gpu-exporter/wheelhouse && sha256sum --quiet --strict -c SHA256SUMS").rc == 0
    freeze = FORCED.check_output(f"{VENV}/bin/python -m pip freeze").lower().replace("_", "-").splitlines()
    for pin in ("nvitop-exporter==1.7.2", "nvitop==1.7.2", "nvidia-ml-py==13.615.71", "prometheus-client==0.26.0"):
        assert pin in freeze


def test_forced_on_the_unit_is_hardened_and_runs_the_exporter_unprivileged():
    unit = FORCED.file(f"/etc/systemd/system/{UNIT}.service").content_string
    for line in ("User=gpu-exporter", "NoNewPrivileges=true", "ProtectSystem=strict", "CapabilityBoundingSet=",
                 "MemoryDenyWriteExecute=true", "--port 9835", "--hostname gpuprov-gpuexp-forced"):
        assert line in unit
    assert FORCED.run(f"systemd-analyze verify /etc/systemd/system/{UNIT}.service").rc == 0
    assert exposure(FORCED, f"{UNIT}.service") <= EXPOSURE_LIMIT
    assert FORCED.service(UNIT).is_enabled
    # The exporter itself ran, as its user, and stopped at the missing NVML (no driver here).
    log = FORCED.check_output(
        f"for i in $(seq 1 30); do journalctl -u {UNIT} --no-pager | grep -q 'NVML) not found' && break; "
        "sleep 1; done; "
        f"journalctl -u {UNIT} --no-pager")
    assert "NVIDIA Management Library (NVML) not found" in log
    assert FORCED.user("gpu-exporter").shell == "/usr/sbin/nologin"
    # It may see the processes that use a GPU, which base's /proc hidepid hides from other users.
    assert "gpuprov-proc" in FORCED.user("gpu-exporter").groups


def test_switching_back_to_auto_stops_the_exporter():
    result, events = run_role("gpu_exporter", {**WHEELS, "gpu_exporter_enabled": "auto"}, pre_roles=("gpu_facts",),
                              limit="gpuprov-gpuexp-forced")
    try:
        assert result.rc == 0, failed_tasks(events)
        assert not FORCED.service(UNIT).is_enabled
        assert FORCED.run(f"systemctl is-active {UNIT}").stdout.strip() in ("inactive", "failed")
    finally:
        again, _ = run_role("gpu_exporter", WHEELS, pre_roles=("gpu_facts",), limit="gpuprov-gpuexp-forced")
    assert again.rc == 0 and FORCED.service(UNIT).is_enabled


def test_bad_input_fails_before_any_change():
    assert_fails_before_any_change("gpu_exporter", {**WHEELS, "gpu_exporter_packages": ["nvitop-exporter>=1.7"]},
                                   "Check the settings", "pinned with ==",
                                   hosts=["gpuprov-gpuexp-auto", "gpuprov-gpuexp-forced"], exact_task=True)
