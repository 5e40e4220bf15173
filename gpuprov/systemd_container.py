"""The one recipe for a systemd container on this kind of Docker host, without `privileged` (which
the sandboxes this project runs in cannot grant): systemd as PID 1, the host's cgroup hierarchy
mounted read-write in the host's cgroup namespace, tmpfs on /run, the capabilities systemd needs in
place of `privileged`, and no seccomp filter.

Three users, one recipe:
  - the lab (`gpuprov lab up`, gpuprov/lab.py) through the Docker SDK: `docker_sdk_kwargs()`;
  - scripts/build-base-images through `docker run`:
    `systemd_container.py docker-run-args APT_DIR IMAGE` (every argument after `run -d`);
  - every Molecule platform: molecule/shared/create.yml fills the recipe into the scenario's
    platforms (`systemd_container.py molecule-platforms MOLECULE_FILE`), so a scenario names only
    what differs: each host's name, image, groups and networks.

Each container gets an apt archive cache of its own on the Docker host (two containers sharing
/var/cache/apt/archives fight over its lock): a Molecule platform's is `apt_root()/<its name>`.
Runs by path as well as `-m` (the standard library and PyYAML only): Molecule's create play runs it
with the controller's Python.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

COMMAND = "/lib/systemd/systemd"
CGROUP = "/sys/fs/cgroup"
TMPFS = ("/run", "/run/lock")
CAPABILITIES = ("SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE")
SECURITY_OPTS = ("seccomp=unconfined",)
ENVIRONMENT = {"container": "docker"}
APT_ARCHIVES = "/var/cache/apt/archives"

# What a scenario's platform may say itself; the recipe supplies everything else.
PLATFORM_KEYS = frozenset({"name", "image", "groups", "children", "networks"})


def apt_root() -> str:
    """The host directory holding the test containers' apt caches: $GPUPROV_CACHE/apt."""
    return (os.environ.get("GPUPROV_CACHE") or "/var/cache/gpuprov").rstrip("/") + "/apt"


def docker_sdk_kwargs(apt_cache: Path) -> dict[str, Any]:
    """Keyword arguments for docker-py's `containers.run()`."""
    return dict(
        command=[COMMAND],
        cgroupns="host",
        cap_add=list(CAPABILITIES),
        security_opt=list(SECURITY_OPTS),
        tmpfs={path: "rw" for path in TMPFS},
        volumes={
            CGROUP: {"bind": CGROUP, "mode": "rw"},
            str(apt_cache): {"bind": APT_ARCHIVES, "mode": "rw"},
        },
        environment=dict(ENVIRONMENT),
    )


def docker_run_args(apt_cache: str, image: str) -> list[str]:
    """`docker run` options, the image and the command."""
    args = ["--cgroupns", "host", "-v", f"{CGROUP}:{CGROUP}:rw", "-v", f"{apt_cache}:{APT_ARCHIVES}:rw"]
    for path in TMPFS:
        args += ["--tmpfs", path]
    for cap in CAPABILITIES:
        args += ["--cap-add", cap]
    for opt in SECURITY_OPTS:
        args += ["--security-opt", opt]
    for key, value in ENVIRONMENT.items():
        args += ["-e", f"{key}={value}"]
    return [*args, image, COMMAND]


def molecule_platform(platform: dict[str, Any], apt_root: str) -> dict[str, Any]:
    """A Molecule docker platform: the scenario's own keys and the recipe. A scenario that sets a
    key of the recipe itself is refused: a second recipe is what this module exists to prevent."""
    extra = sorted(set(platform) - PLATFORM_KEYS)
    if extra:
        raise ValueError(f"platform {platform.get('name')!r} sets {', '.join(extra)}: the systemd container "
                         f"recipe (gpuprov/systemd_container.py) owns those; a platform names only "
                         f"{', '.join(sorted(PLATFORM_KEYS))}")
    return {
        **platform,
        "command": COMMAND,
        "cgroupns_mode": "host",
        "volumes": [f"{CGROUP}:{CGROUP}:rw", f"{apt_root}/{platform['name']}:{APT_ARCHIVES}:rw"],
        "tmpfs": list(TMPFS),
        "capabilities": list(CAPABILITIES),
        "security_opts": list(SECURITY_OPTS),
        "env": dict(ENVIRONMENT),
    }


def molecule_platforms(molecule_file: Path) -> list[dict[str, Any]]:
    """The platforms of Molecule's merged scenario config (MOLECULE_FILE), recipe filled in."""
    import yaml

    config = yaml.safe_load(molecule_file.read_text(encoding="utf-8")) or {}
    return [molecule_platform(p, apt_root()) for p in config.get("platforms") or []]


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "docker-run-args":
        print("\n".join(docker_run_args(argv[1], argv[2])))
    elif len(argv) == 2 and argv[0] == "molecule-platforms":
        try:
            print(json.dumps(molecule_platforms(Path(argv[1]))))
        except ValueError as e:
            print(f"systemd_container: {e}", file=sys.stderr)
            return 2
    else:
        print(__doc__, file=sys.stderr)
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
