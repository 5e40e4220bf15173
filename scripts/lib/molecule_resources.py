"""What a Molecule scenario holds while it runs, for scripts/test's scheduler: its containers' names,
its Docker networks and the host directories it mounts as apt caches. Two scenarios that share one
must not run together. A scenario on the base images also names the step that builds them
(`after:base-images`).

The shared platforms (.config/molecule/config.yml) are named after the scenario run,
GPUPROV_SCENARIO: scripts/test sets it to the scenario's id (`--id`: the role's name with `-` for
`_`, and the scenario's name when it is not `default`), and the names here are read the way
Molecule reads them, through its own interpolation with that id.

usage: molecule_resources.py SCENARIO_DIR        (prints a comma-separated list)
       molecule_resources.py --id SCENARIO_DIR   (prints the scenario's id)
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
# Images that scripts/build-base-images makes: a scenario on them waits for that step.
BASE_IMAGE = "-base:"
BASE_IMAGES_STEP = "after:base-images"


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
    out: set[str] = set()
    for p in platforms(scenario_dir):
        out.add(f"container:{p['name']}")
        out.update(f"network:{n['name']}" for n in p.get("networks", []))
        for volume in p.get("volumes", []):
            if f":{APT_ARCHIVES}" in volume:
                out.add(f"apt:{volume.split(':')[0]}")
        if BASE_IMAGE in p.get("image", ""):
            out.add(BASE_IMAGES_STEP)
    return sorted(out)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--id":
        print(scenario_id(Path(sys.argv[2])))
    elif len(sys.argv) == 2:
        try:
            print(",".join(resources(Path(sys.argv[1]))))
        except ValueError as e:  # a platform that writes its own container recipe
            print(f"molecule_resources: {sys.argv[1]}: {e}", file=sys.stderr)
            sys.exit(2)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
