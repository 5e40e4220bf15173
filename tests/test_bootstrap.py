"""scripts/gpuprov bootstraps .venv once; a second call installs nothing."""

from __future__ import annotations

from conftest import ROOT, run_gpuprov


def test_second_call_reinstalls_nothing():
    first = run_gpuprov("--version")
    assert first.returncode == 0, first.stderr
    stamp = ROOT / ".venv" / ".gpuprov-stamp"
    assert stamp.exists()
    before = stamp.stat().st_mtime_ns
    second = run_gpuprov("--version")
    assert second.returncode == 0
    assert second.stdout.strip() == "gpuprov 0.1.0"
    assert "installing" not in second.stderr
    assert stamp.stat().st_mtime_ns == before


def test_stamp_covers_the_pins():
    # The stamp is a hash of pyproject.toml and constraints.txt: changing a pin changes it.
    text = (ROOT / ".venv" / ".gpuprov-stamp").read_text().split()
    assert len(text[0]) == 32 and text[1] in ("runtime", "test")


def test_every_direct_dependency_is_pinned_exactly():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["test"]
    loose = [d for d in deps if "==" not in d]
    assert loose == []
    pins = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    for dep in deps:
        name = dep.split("==")[0].split("[")[0].lower()
        assert name in pins, f"{name} missing from constraints.txt (run scripts/lock)"


def test_a_wheel_that_does_not_match_the_lock_is_never_installed(tmp_path):
    """The controller's venv is installed only from wheels whose sha256 the repository pins: with one
    pin changed (as if the index served a changed wheel) the bootstrap fails naming the wheel, and
    the venv gets none of the packages and no stamp."""
    import os
    import shutil
    import subprocess

    tree = tmp_path / "tree"
    for rel in ("scripts/lib/bootstrap.sh", "pyproject.toml", "constraints.txt", "roles/_common/files/check_wheels.py"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tree / rel)
    lock = (ROOT / "scripts/data/controller-wheels.sha256").read_text().splitlines()
    changed = next(i for i, line in enumerate(lock) if "  pyyaml-" in line)
    lock[changed] = "0" * 64 + lock[changed][64:]
    (tree / "scripts/data").mkdir(parents=True)
    (tree / "scripts/data/controller-wheels.sha256").write_text("\n".join(lock) + "\n")
    env = {**os.environ, "GPUPROV_ROOT": str(tree), "GPUPROV_VENV_CACHE": str(tmp_path / "venvs")}
    env.pop("GPUPROV_VENV", None)
    out = subprocess.run(["bash", "-c", ". scripts/lib/bootstrap.sh && bootstrap_venv runtime; echo \"rc=$? $VENV\""],
                         cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    rc, venv = out.stdout.split()[-2:]
    assert rc == "rc=1", out.stdout + out.stderr
    assert "wheel refused: pyyaml-" in out.stderr and "the lock pins 0000" in out.stderr, out.stderr
    site = list((tmp_path / "venvs").glob("*/lib/python3*/site-packages"))
    assert site and not any(p.name.startswith(("yaml", "ansible")) for p in site[0].iterdir())
    assert not (tmp_path / "venvs" / venv.split("/")[-1] / ".gpuprov-stamp").exists()
