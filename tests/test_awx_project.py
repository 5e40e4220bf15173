"""The repository as an AWX / Automation Platform project: its collection pins and its execution
environment's packages are the ones the CLI's venv really has (read from the installed venv, not
from a list here), and every collection the roles and playbooks name is pinned. (ansible-builder
cannot build here: no container registry is reachable; the definition is checked, not built.)"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _installed_collections() -> dict[str, str]:
    out = subprocess.run([str(Path(sys.executable).parent / "ansible-galaxy"), "collection", "list", "--format",
                          "yaml"], capture_output=True, text=True, check=True, timeout=120).stdout
    found: dict[str, str] = {}
    for path_entries in yaml.safe_load(out).values():
        for name, info in path_entries.items():
            found.setdefault(name, info["version"])
    return found


def _used_collections() -> set[str]:
    used = set()
    for path in [*ROOT.glob("roles/*/tasks/**/*.yml"), *ROOT.glob("roles/*/handlers/*.yml"),
                 *ROOT.glob("playbooks/*.yml")]:
        used |= set(re.findall(r"^\s*-?\s*([a-z_]+\.[a-z_]+)\.[a-z_]+:", path.read_text(), re.M))
    return used - {"ansible.builtin"}


def test_the_collection_pins_are_the_installed_versions_and_cover_every_collection_used():
    pinned = {c["name"]: c["version"] for c in yaml.safe_load((ROOT / "collections/requirements.yml")
                                                              .read_text())["collections"]}
    installed = _installed_collections()
    assert {n: installed.get(n) for n in pinned} == pinned
    used = _used_collections()
    assert used and used <= set(pinned), used - set(pinned)


def test_the_execution_environment_has_the_clis_pins():
    ee = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    assert ee["version"] == 3 and ee["dependencies"]["galaxy"] == "collections/requirements.yml"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    constraints = dict(ln.strip().lower().split("==") for ln in (ROOT / "constraints.txt").read_text().splitlines()
                       if "==" in ln and not ln.startswith("#"))
    assert ee["dependencies"]["ansible_core"]["package_pip"] in deps
    assert ee["dependencies"]["ansible_runner"]["package_pip"] in deps
    for req in ee["dependencies"]["python"]:
        name, version = req.lower().split("==")
        assert constraints.get(name) == version, f"{req}: the CLI's venv pins {constraints.get(name)}"


def test_ansible_builder_makes_the_build_context_with_those_pins(tmp_path):
    """ansible-builder itself reads the definition (its schema, version 3) and writes the build
    context, as `ansible-builder build` would before building: the image's Containerfile installs
    the pinned ansible-core and ansible-runner, its Python requirements and collections are the
    repository's. (Building the image needs the base image from a registry: not here.)"""
    builder = Path(sys.executable).parent / "ansible-builder"
    done = subprocess.run([str(builder), "create", "-f", str(ROOT / "execution-environment.yml"), "-c",
                           str(tmp_path), "--output-filename", "Containerfile"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    ee = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    containerfile = (tmp_path / "Containerfile").read_text()
    refs = f'ARG ANSIBLE_INSTALL_REFS="{ee["dependencies"]["ansible_core"]["package_pip"]} ' \
           f'{ee["dependencies"]["ansible_runner"]["package_pip"]}"'
    assert refs in containerfile
    assert f'ARG EE_BASE_IMAGE="{ee["images"]["base_image"]["name"]}"' in containerfile
    build = tmp_path / "_build"
    assert (build / "requirements.txt").read_text().split() == ee["dependencies"]["python"]
    assert yaml.safe_load((build / "requirements.yml").read_text()) == \
        yaml.safe_load((ROOT / "collections/requirements.yml").read_text())
