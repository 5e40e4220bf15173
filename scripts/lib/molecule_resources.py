"""What a Molecule scenario holds while it runs, for scripts/test's scheduler: its containers' names,
its Docker networks and the host directories it mounts as apt caches. Two scenarios that share one
must not run together. A scenario on the base images also names the step that builds them
(`after:base-images`).

usage: molecule_resources.py SCENARIO_DIR   (prints a comma-separated list)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

SHARED_CONFIG = Path(__file__).resolve().parents[2] / ".config" / "molecule" / "config.yml"
APT_ARCHIVES = ":/var/cache/apt/archives"
# Images that scripts/build-base-images makes: a scenario on them waits for that step.
BASE_IMAGE = "-base:"
BASE_IMAGES_STEP = "after:base-images"


def platforms(scenario_dir: Path) -> list[dict]:
    """The scenario's platforms; Molecule replaces the shared list when a scenario names its own."""
    own = yaml.safe_load((scenario_dir / "molecule.yml").read_text()) or {}
    if own.get("platforms"):
        return own["platforms"]
    return (yaml.safe_load(SHARED_CONFIG.read_text()) or {}).get("platforms", [])


def resources(scenario_dir: Path) -> list[str]:
    out: set[str] = set()
    for p in platforms(scenario_dir):
        out.add(f"container:{p['name']}")
        out.update(f"network:{n['name']}" for n in p.get("networks", []))
        for volume in p.get("volumes", []):
            if APT_ARCHIVES in volume:
                out.add(f"apt:{volume.split(APT_ARCHIVES)[0]}")
        if BASE_IMAGE in p.get("image", ""):
            out.add(BASE_IMAGES_STEP)
    return sorted(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    print(",".join(resources(Path(sys.argv[1]))))
