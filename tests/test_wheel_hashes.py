"""Venvs installed from a package index (`*_wheel_source: index`) are hash-checked: _common's
gpuprov_hashed_requirements filter turns the pins into requirement lines carrying the sha256 of each
wheel the repository's lock reviewed, and pip installs them with --require-hashes. Checked
with pip itself: the reviewed wheel installs; the same wheel with one byte changed, served from the
same place, is refused before anything is installed. A pin the lock lacks, or a pin that is not
exact, fails in the filter with the pin named."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from conftest import ROOT, load_module

wheels_filter = load_module("gpuprov_wheels", "roles/_common/filter_plugins/gpuprov_wheels.py")
hashed_requirements = wheels_filter.hashed_requirements


def _wheel(directory: Path, body: str) -> Path:
    """A minimal pure-Python wheel, gpuprov_probe 1.0, whose module holds `body`."""
    path = directory / "gpuprov_probe-1.0-py3-none-any.whl"
    dist = "gpuprov_probe-1.0.dist-info"
    files = {
        "gpuprov_probe.py": f"VALUE = {body!r}\n",
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: gpuprov-probe\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0)), text)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pip(requirements: Path, links: Path, target: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir",
         "--require-hashes", "--no-deps", "--no-index", "--find-links", str(links), "--target", str(target),
         "-r", str(requirements)],
        capture_output=True, text=True, timeout=120)


def test_the_lines_carry_every_reviewed_hash_of_the_pin():
    lock = ("# reviewed\n"
            f"{'a' * 64}  nvitop_exporter-1.7.2-py3-none-any.whl\n"
            f"{'b' * 64}  psutil-7.2.2-cp36-abi3-manylinux_2_28_x86_64.whl\n"
            f"{'c' * 64}  psutil-7.2.2-cp37-abi3-macosx_11_0_arm64.whl\n"
            f"{'d' * 64}  psutil-7.1.0-cp36-abi3-manylinux_2_28_x86_64.whl\n"
            f"{'e' * 64}  torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl\n")
    lines = hashed_requirements(["nvitop-exporter==1.7.2", "psutil==7.2.2", "torch==2.13.0+cpu"], lock, "x.sha256")
    assert lines == [f"nvitop-exporter==1.7.2 --hash=sha256:{'a' * 64}",
                     f"psutil==7.2.2 --hash=sha256:{'b' * 64} --hash=sha256:{'c' * 64}",
                     f"torch==2.13.0+cpu --hash=sha256:{'e' * 64}"]


@pytest.mark.parametrize(("pins", "said"), [
    (["nvitop-exporter==1.7.2", "psutil==9.9.9"], "no reviewed wheel in x.sha256 for psutil==9.9.9"),
    (["gpuprov-gateway==0.1.0"], "no reviewed wheel in x.sha256 for gpuprov-gateway==0.1.0"),
    (["psutil>=7"], "needs an exact pin"),
])
def test_a_pin_the_lock_lacks_or_an_open_pin_is_refused_by_name(pins, said):
    lock = f"{'a' * 64}  nvitop_exporter-1.7.2-py3-none-any.whl\n"
    with pytest.raises(AnsibleFilterError, match=said.replace("(", r"\(").replace(")", r"\)")):
        hashed_requirements(pins, lock, "x.sha256")


def test_pip_installs_the_reviewed_wheel_and_refuses_it_with_one_byte_changed(tmp_path):
    reviewed, served, target = tmp_path / "reviewed", tmp_path / "served", tmp_path / "site"
    reviewed.mkdir()
    served.mkdir()
    good = _wheel(reviewed, "reviewed")
    lock = f"{_sha(good)}  {good.name}\n"
    requirements = tmp_path / "requirements-hashed.txt"
    requirements.write_text("\n".join(hashed_requirements(["gpuprov-probe==1.0"], lock, "probe.sha256")) + "\n")

    ok = _pip(requirements, reviewed, target)
    assert ok.returncode == 0, ok.stderr
    assert (target / "gpuprov_probe.py").read_text() == "VALUE = 'reviewed'\n"

    # The index serves the same name and version with one byte changed.
    tampered = _wheel(served, "reviewer")
    assert tampered.name == good.name and _sha(tampered) != _sha(good)
    other = tmp_path / "site2"
    refused = _pip(requirements, served, other)
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr, refused.stderr
    assert not (other / "gpuprov_probe.py").exists()


def test_the_repositorys_locks_give_hashes_for_every_pin_of_the_exporter():
    import yaml

    defaults = yaml.safe_load((ROOT / "roles/gpu_exporter/defaults/main.yml").read_text())
    pins = defaults["gpu_exporter_packages"] + defaults["gpu_exporter_constraints"]
    lines = hashed_requirements(pins, (ROOT / "roles/_common/files/wheel-locks/gpu-exporter.sha256").read_text())
    assert len(lines) == len(pins) and all("--hash=sha256:" in line for line in lines)


def test_tritons_pins_name_every_wheel_of_its_lock_and_each_has_a_hash():
    """pip's hash mode refuses a dependency the requirements do not name, so triton's constraints name
    every package of its CPU set (the lab's torch build); a GPU host's CUDA torch needs its wheels
    recorded in the lock first, as the controller's wheelhouse does."""
    import yaml

    defaults = yaml.safe_load((ROOT / "roles/triton/defaults/main.yml").read_text())
    packages = [p if not p.startswith("torch==") else p + "+cpu" for p in defaults["triton_python_packages"]]
    no_deps = [f"nvidia-pytriton=={defaults['triton_pytriton_version']}"]
    lock = (ROOT / "roles/_common/files/wheel-locks/triton.sha256").read_text()
    pins = packages + defaults["triton_python_constraints"]
    lines = hashed_requirements(pins, lock) + hashed_requirements(no_deps, lock)
    assert len(lines) == len(pins) + 1
    locked = {wheels_filter._normal(line.split()[1].split("-")[0]) for line in lock.splitlines() if line.strip()}
    named = {wheels_filter._normal(p.split("==")[0]) for p in pins + no_deps}
    assert locked == named, (sorted(locked - named), sorted(named - locked))
