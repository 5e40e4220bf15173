"""The one systemd container recipe (gpuprov/systemd_container.py) and its three users: the lab's
Docker SDK call, scripts/build-base-images' `docker run`, every Molecule platform (filled in by
molecule/shared/create.yml). That the containers it makes boot systemd is what every Molecule
scenario, the base image build and the lab test show; here: that all three say the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpuprov import lab, systemd_container

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "gpuprov" / "systemd_container.py"
sys.path.insert(0, str(ROOT / "scripts" / "lib"))
import molecule_resources  # noqa: E402

SCENARIOS = sorted(p.parent for p in ROOT.glob("roles/*/molecule/*/molecule.yml"))


def _recipe_script(*args: str) -> subprocess.CompletedProcess:
    # By path, as Molecule's create play and scripts/build-base-images run it.
    return subprocess.run([sys.executable, str(RECIPE), *args], capture_output=True, text=True, timeout=60, cwd="/")


def _options(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_docker_run_args_the_lab_and_molecule_say_the_same(tmp_path):
    apt = tmp_path / "apt" / "h1"
    run = _recipe_script("docker-run-args", str(apt))
    assert run.returncode == 0, run.stderr
    args = run.stdout.splitlines()
    sdk = lab._run_kwargs(lab.LabHost("gpuprov-lab-gpu1", "debian12", "gpu_servers"))
    platform = systemd_container.molecule_platform(
        {"name": "h1", "image": "gpuprov/debian12-base:latest", "groups": ["g"]}, str(tmp_path / "apt"))

    caps = {"SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"}
    assert set(_options(args, "--cap-add")) == set(sdk["cap_add"]) == set(platform["capabilities"]) == caps
    seccomp = ["seccomp=unconfined"]
    assert _options(args, "--security-opt") == sdk["security_opt"] == platform["security_opts"] == seccomp
    assert _options(args, "--cgroupns") == ["host"] and sdk["cgroupns"] == platform["cgroupns_mode"] == "host"
    assert set(_options(args, "--tmpfs")) == set(platform["tmpfs"]) == {"/run", "/run/lock"}
    assert {"/run", "/run/lock"} <= set(sdk["tmpfs"])
    assert _options(args, "-e") == ["container=docker"]
    assert sdk["environment"] == platform["env"] == {"container": "docker"}
    volumes = _options(args, "-v")
    assert volumes == platform["volumes"] == ["/sys/fs/cgroup:/sys/fs/cgroup:rw", f"{apt}:/var/cache/apt/archives:rw"]
    assert sdk["volumes"]["/sys/fs/cgroup"] == {"bind": "/sys/fs/cgroup", "mode": "rw"}
    assert sdk["command"] == [platform["command"]] == ["/lib/systemd/systemd"]
    assert "privileged" not in sdk and "privileged" not in platform and "--privileged" not in args


def test_a_platform_that_writes_its_own_recipe_is_refused(tmp_path):
    molecule_file = tmp_path / "molecule.yml"
    molecule_file.write_text(yaml.safe_dump({"platforms": [
        {"name": "ok", "image": "i"}, {"name": "odd", "image": "i", "privileged": True, "capabilities": ["ALL"]}]}))
    run = _recipe_script("molecule-platforms", str(molecule_file), str(tmp_path))
    assert run.returncode == 2 and run.stdout == ""
    assert "platform 'odd' sets capabilities, privileged" in run.stderr and "Traceback" not in run.stderr


def test_molecule_platforms_get_an_apt_cache_each(tmp_path):
    molecule_file = tmp_path / "molecule.yml"
    molecule_file.write_text(yaml.safe_dump({"platforms": [
        {"name": "a", "image": "i", "groups": ["g"], "networks": [{"name": "n"}]}, {"name": "b", "image": "i"}]}))
    run = _recipe_script("molecule-platforms", str(molecule_file), f"{tmp_path}/apt/")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert [p["name"] for p in got] == ["a", "b"]
    assert got[0]["groups"] == ["g"] and got[0]["networks"] == [{"name": "n"}]
    assert [p["volumes"][1] for p in got] == [f"{tmp_path}/apt/{n}:/var/cache/apt/archives:rw" for n in "ab"]
    assert all(p["capabilities"] == ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"] for p in got)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_every_scenario_names_only_its_hosts(scenario):
    """No scenario writes a recipe of its own: every platform passes molecule_platform's check."""
    found = molecule_resources.platforms(scenario)
    assert found, scenario
    for p in found:
        assert p["image"].startswith("gpuprov/debian1"), p
        assert p["capabilities"] == list(systemd_container.CAPABILITIES), p


def test_the_create_step_fills_the_recipe_in():
    config = yaml.safe_load((ROOT / ".config" / "molecule" / "config.yml").read_text())
    assert config["provisioner"]["playbooks"]["create"].endswith("/molecule/shared/create.yml")
    create = (ROOT / "molecule" / "shared" / "create.yml").read_text()
    assert "systemd_container.py" in create and "molecule-platforms" in create
    for key in ("cgroupns_mode", "volumes", "tmpfs", "capabilities", "security_opts", "env", "command"):
        assert f"{key}: \"{{{{ item.{key} }}}}\"" in create, key
