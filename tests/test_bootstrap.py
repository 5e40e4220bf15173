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
