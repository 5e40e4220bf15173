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

LOCAL_IMAGES = {f"gpuprov/{os}-{kind}" for os in ("debian12", "debian13") for kind in ("systemd", "base")}
SCENARIOS = sorted(p.parent for p in ROOT.glob("roles/*/molecule/*/molecule.yml"))


def _recipe_script(*args: str) -> subprocess.CompletedProcess:
    # By path, as Molecule's create play and scripts/build-base-images run it.
    return subprocess.run([sys.executable, str(RECIPE), *args], capture_output=True, text=True, timeout=60, cwd="/")


def _options(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_docker_run_args_the_lab_and_molecule_say_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUPROV_ROOT", str(tmp_path))  # the lab's state (its apt caches) goes here
    apt = tmp_path / "apt" / "h1"
    run = _recipe_script("docker-run-args", str(apt), "gpuprov/debian12-systemd:latest")
    assert run.returncode == 0, run.stderr
    args = run.stdout.splitlines()
    assert args[-2:] == ["gpuprov/debian12-systemd:latest", "/lib/systemd/systemd"]
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
    lab_apt = tmp_path / ".gpuprov" / "apt-cache" / "debian12" / "gpuprov-lab-gpu1"
    assert sdk["volumes"] == {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                              str(lab_apt): {"bind": "/var/cache/apt/archives", "mode": "rw"}}
    assert lab_apt.is_dir()
    assert sdk["command"] == [platform["command"]] == ["/lib/systemd/systemd"]
    assert "privileged" not in sdk and "privileged" not in platform and "--privileged" not in args


def test_a_platform_that_writes_its_own_recipe_is_refused(tmp_path):
    molecule_file = tmp_path / "molecule.yml"
    molecule_file.write_text(yaml.safe_dump({"platforms": [
        {"name": "ok", "image": "i"}, {"name": "odd", "image": "i", "privileged": True, "capabilities": ["ALL"]}]}))
    run = _recipe_script("molecule-platforms", str(molecule_file))
    assert run.returncode == 2 and run.stdout == ""
    assert "platform 'odd' sets capabilities, privileged" in run.stderr and "Traceback" not in run.stderr


def test_molecule_platforms_get_an_apt_cache_each_under_gpuprov_cache(tmp_path, monkeypatch):
    molecule_file = tmp_path / "molecule.yml"
    molecule_file.write_text(yaml.safe_dump({"platforms": [
        {"name": "a", "image": "i", "groups": ["g"], "networks": [{"name": "n"}]}, {"name": "b", "image": "i"}]}))
    monkeypatch.setenv("GPUPROV_CACHE", f"{tmp_path}/cache/")
    run = _recipe_script("molecule-platforms", str(molecule_file))
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert [p["name"] for p in got] == ["a", "b"]
    assert got[0]["groups"] == ["g"] and got[0]["networks"] == [{"name": "n"}]
    assert [p["volumes"][1] for p in got] == [f"{tmp_path}/cache/apt/{n}:/var/cache/apt/archives:rw" for n in "ab"]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_every_scenario_names_only_its_hosts(scenario):
    """No scenario writes a recipe of its own (molecule_platform refuses it) and every host comes
    from the project's local images."""
    found = molecule_resources.platforms(scenario)
    assert found, scenario
    assert all(p["image"].split(":")[0] in LOCAL_IMAGES for p in found), found


def test_the_create_step_hands_every_recipe_key_to_docker():
    """molecule/shared/create.yml (in place of molecule-plugins' create) passes on every key the
    recipe fills in, never pulls, keeps containers already on a network, and labels what it makes
    as Molecule's destroy and reset expect."""
    config = yaml.safe_load((ROOT / ".config" / "molecule" / "config.yml").read_text())
    assert config["provisioner"]["playbooks"]["create"].endswith("/molecule/shared/create.yml")
    [play] = yaml.safe_load((ROOT / "molecule" / "shared" / "create.yml").read_text())
    tasks = {next(k for k in t if k.startswith(("community.", "ansible."))): t for t in play["tasks"]}
    assert "molecule-platforms" in tasks["ansible.builtin.set_fact"]["ansible.builtin.set_fact"]["gpuprov_platforms"]
    container = tasks["community.docker.docker_container"]["community.docker.docker_container"]
    recipe_keys = set(systemd_container.molecule_platform({"name": "x", "image": "i"}, "/a")) - {"name", "image"}
    for key in recipe_keys:
        assert container[key] == f"{{{{ item.{key} }}}}", key
    assert container["pull"] == "never" and container["labels"] == {"owner": "molecule"}
    network = tasks["community.docker.docker_network"]["community.docker.docker_network"]
    assert network["appends"] is True and network["labels"] == {"owner": "molecule"}
