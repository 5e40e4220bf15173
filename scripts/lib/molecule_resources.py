"""What a Molecule scenario holds while it runs: its containers' names, its Docker networks and the
host directories it mounts as apt caches. No two scenarios share one, so pytest-xdist runs them side
by side (tests/suite/test_molecule.py; tests/test_systemd_container.py checks it).

The shared platforms (.config/molecule/config.yml) are named after the scenario run,
GPUPROV_SCENARIO: tests/suite/test_molecule.py sets it to the scenario's id (`scenario_id`: the
role's name with `-` for `_`, and the scenario's name when it is not `default`), and the names here
are read the way Molecule reads them, through its own interpolation with that id.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from molecule.interpolation import Interpolator, TemplateWithDefaults

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's gpuprov package
from gpuprov.systemd_container import APT_ARCHIVES, apt_root, molecule_platform  # noqa: E402

SHARED_CONFIG = Path(__file__).resolve().parents[2] / ".config" / "molecule" / "config.yml"


def scenario_id(scenario_dir: Path) -> str:
    """roles/<role>/molecule/<scenario> -> the role's name without a leading `_` (the internal role)
    and with `-` for `_` (container and host names take no `_`), followed by `-<scenario>` when the
    scenario is not `default`."""
    scenario, role = scenario_dir.resolve().name, scenario_dir.resolve().parents[1].name
    name = role.strip("_") + ("" if scenario == "default" else "-" + scenario)
    return name.replace("_", "-")


def _load(path: Path, scenario: str) -> dict:
    env = {**os.environ, "GPUPROV_SCENARIO": scenario}
    return yaml.safe_load(Interpolator(TemplateWithDefaults, env).interpolate(path.read_text())) or {}


def platforms(scenario_dir: Path) -> list[dict]:
    """The scenario's platforms, the systemd container recipe filled in as Molecule's create step
    does (molecule/shared/create.yml); Molecule replaces the shared list when a scenario names its own."""
    scenario = scenario_id(scenario_dir)
    own = _load(scenario_dir / "molecule.yml", scenario)
    listed = own.get("platforms") or _load(SHARED_CONFIG, scenario).get("platforms", [])
    return [molecule_platform(p, apt_root()) for p in listed]


def resources(scenario_dir: Path) -> list[str]:
    """`container:NAME`, `network:NAME` and `apt:DIRECTORY` of each platform."""
    out: set[str] = set()
    for p in platforms(scenario_dir):
        out.add(f"container:{p['name']}")
        out.update(f"network:{n['name']}" for n in p.get("networks", []))
        for volume in p.get("volumes", []):
            if f":{APT_ARCHIVES}" in volume:
                out.add(f"apt:{volume.split(':')[0]}")
    return sorted(out)


def container_names(scenario_dir: Path) -> list[str]:
    """The names of the scenario's containers, as its run (`scenario_id`) names them."""
    return [p["name"] for p in platforms(scenario_dir)]


def uses_base_images(scenario_dir: Path) -> bool:
    """Whether a platform starts from the base images (scripts/build-base-images makes them)."""
    return any("-base:" in p.get("image", "") for p in platforms(scenario_dir))
