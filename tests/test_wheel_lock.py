"""The wheel lock (roles/_common/files/check_wheels.py, run by the controller's wheelhouse step
before a downloaded wheelhouse lands): a wheel with one byte changed is refused, an unknown one is
refused unless a maintainer records it, a mismatch is never recorded, and the repository's locks are
well-formed and cover the wheelhouses' packages."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT / "roles/_common/files/check_wheels.py"
LOCKS = ROOT / "roles/_common/files/wheel-locks"


def _check(lock: Path, wheels: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), str(lock), str(wheels), *extra],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def wheelhouse(tmp_path: Path) -> tuple[Path, Path]:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    lines = []
    for name, body in (("numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.whl", b"numpy" * 1000),
                       ("packaging-26.4-py3-none-any.whl", b"packaging" * 100)):
        (wheels / name).write_bytes(body)
        lines.append(f"{hashlib.sha256(body).hexdigest()}  {name}")
    lock = tmp_path / "lock.sha256"
    lock.write_text("# reviewed wheels\n" + "\n".join(lines) + "\n")
    return lock, wheels


def test_the_locked_wheels_pass(wheelhouse):
    lock, wheels = wheelhouse
    out = _check(lock, wheels)
    assert out.returncode == 0, out.stderr


def test_a_wheel_with_one_byte_changed_is_refused(wheelhouse):
    lock, wheels = wheelhouse
    wheel = wheels / "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.whl"
    body = bytearray(wheel.read_bytes())
    body[100] ^= 0x01
    wheel.write_bytes(bytes(body))
    before = lock.read_text()
    for extra in ((), ("--record",)):
        out = _check(lock, wheels, *extra)
        assert out.returncode == 1
        assert "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.whl: sha256" in out.stderr
        assert "refused" in out.stderr and "packaging" not in out.stderr
    assert lock.read_text() == before  # a mismatch is never recorded


def test_an_unknown_wheel_is_refused_unless_recorded(wheelhouse):
    lock, wheels = wheelhouse
    (wheels / "evil-1.0-py3-none-any.whl").write_bytes(b"not reviewed")
    out = _check(lock, wheels)
    assert out.returncode == 1 and "evil-1.0-py3-none-any.whl: not in lock.sha256" in out.stderr
    assert "evil" not in lock.read_text()
    out = _check(lock, wheels, "--record")
    assert out.returncode == 0 and "recorded 1 new wheel" in out.stdout
    assert f"{hashlib.sha256(b'not reviewed').hexdigest()}  evil-1.0-py3-none-any.whl" in lock.read_text()
    assert _check(lock, wheels).returncode == 0


def test_wheels_built_from_the_checkout_are_not_looked_up(wheelhouse):
    lock, wheels = wheelhouse
    (wheels / "gpuprov_gateway-0.1.0-py3-none-any.whl").write_bytes(b"built here")
    assert _check(lock, wheels).returncode == 1
    assert _check(lock, wheels, "--local", "gpuprov_gateway-0.1.0-py3-none-any.whl").returncode == 0
    (wheels / ".local").write_text("gpuprov_gateway-0.1.0-py3-none-any.whl\n")
    assert _check(lock, wheels, "--local-file", str(wheels / ".local")).returncode == 0


def test_a_malformed_lock_is_an_error_not_a_pass(wheelhouse):
    lock, wheels = wheelhouse
    lock.write_text("deadbeef numpy.whl\n")
    out = _check(lock, wheels)
    assert out.returncode != 0 and "not a sha256sum line" in out.stderr


@pytest.mark.parametrize("name, must_have", [
    ("triton", ["torch-2.13.0+cpu-cp311-", "numpy-1.26.4-cp311-", "nvidia_pytriton-0.7.0-", "transformers-5.24.0-"]),
    ("gateway", ["-cp311-", "-cp313-"]),
    ("gpu-exporter", ["nvitop"]),
])
def test_the_repositorys_locks_are_well_formed(name, must_have):
    """Each wheelhouse has a lock (its name as _common's wheelhouse step derives it), every line a
    sha256 and a wheel, one hash per wheel, for the Python versions the scenarios run."""
    lines = [line for line in (LOCKS / f"{name}.sha256").read_text().splitlines() if line.strip()]
    names = []
    for line in lines:
        digest, _, wheel = line.partition("  ")
        assert len(digest) == 64 and int(digest, 16) >= 0 and wheel.endswith(".whl"), line
        names.append(wheel)
    assert len(names) == len(set(names))
    for part in must_have:
        assert any(part in n for n in names), (name, part)


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def test_the_controllers_lock_covers_every_pin():
    """scripts/lib/bootstrap.sh installs the controller's venv only from wheels in
    scripts/data/controller-wheels.sha256: every pin of constraints.txt has its wheel there (a pin
    changed without `scripts/lock` fails here, not at a user's bootstrap)."""
    locked = set()
    for line in (ROOT / "scripts/data/controller-wheels.sha256").read_text().splitlines():
        wheel = line.partition("  ")[2]
        name, version = wheel.split("-")[:2]
        locked.add((_norm(name), version))
    pins = [line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")]
    missing = [f"{n}=={v}" for n, v in pins if (_norm(n), v.strip()) not in locked]
    assert pins and missing == []
    # The controllers' Pythons the bootstrap's message names: compiled wheels for both.
    text = (ROOT / "scripts/data/controller-wheels.sha256").read_text()
    for tag in ("cp311-cp311", "cp312-cp312"):
        assert f"pyyaml-6.0.4-{tag}-" in text and f"numpy-1.26.4-{tag}-" in text, tag
