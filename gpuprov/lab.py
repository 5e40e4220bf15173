"""The local lab: systemd containers from the gpuprov Debian images, managed with the Docker SDK.

`up` starts them (building the images first when their recipe changed): the GPU hosts and one
monitoring host, waits until systemd is running in each, and writes `inventories/lab/hosts.yml`;
`down` removes them; `status` lists them.
Containers get the capability set that runs systemd here without `privileged`.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import docker
import yaml
from docker.errors import NotFound
from docker.models.containers import Container

from gpuprov import paths

LABEL = "gpuprov.lab"
NETWORK = "gpuprov-lab"
IMAGES = {"debian12": "gpuprov/debian12-systemd:latest", "debian13": "gpuprov/debian13-systemd:latest"}


@dataclass(frozen=True)
class LabHost:
    name: str
    os: str
    group: str

    @property
    def image(self) -> str:
        return IMAGES[self.os]


def default_hosts(os_name: str = "debian12", count: int = 1) -> list[LabHost]:
    if os_name not in IMAGES:
        raise ValueError(f"unknown lab OS {os_name!r}; choose one of {', '.join(IMAGES)}")
    if count < 1:
        raise ValueError("the lab needs at least one host")
    gpus = [LabHost(f"gpuprov-lab-gpu{i}", os_name, "gpu_servers") for i in range(1, count + 1)]
    return gpus + [LabHost("gpuprov-lab-mon1", os_name, "monitoring")]


def client() -> docker.DockerClient:
    return docker.from_env()


def build_images(names: Iterable[str]) -> None:
    script = paths.repo_root() / "scripts" / "build-test-images"
    subprocess.run([str(script), *sorted(set(names))], check=True)


def _run_kwargs(host: LabHost) -> dict:
    # One apt cache per host: two containers sharing /var/cache/apt/archives fight over its lock.
    cache = Path(paths.state_dir() / "apt-cache" / host.os / host.name)
    cache.mkdir(parents=True, exist_ok=True)
    return dict(
        image=host.image,
        name=host.name,
        hostname=host.name,
        command=["/lib/systemd/systemd"],
        detach=True,
        labels={LABEL: "1", "gpuprov.group": host.group, "gpuprov.os": host.os},
        cgroupns="host",
        cap_add=["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"],
        security_opt=["seccomp=unconfined"],
        tmpfs={"/run": "rw", "/run/lock": "rw", "/tmp": "rw,exec"},
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            str(cache): {"bind": "/var/cache/apt/archives", "mode": "rw"},
        },
        network=NETWORK,
        environment={"container": "docker"},
    )


def wait_for_systemd(container: Container, timeout_s: float = 90.0) -> str:
    """Wait until systemd in `container` is running (or degraded); return its state."""
    deadline = time.monotonic() + timeout_s
    state = "unknown"
    while time.monotonic() < deadline:
        rc, out = container.exec_run(["systemctl", "is-system-running"])
        state = out.decode().strip() or "unknown"
        if state in ("running", "degraded"):
            return state
        time.sleep(1)
    raise TimeoutError(f"{container.name}: systemd did not come up within {timeout_s:.0f}s (state {state})")


APT_CACHE_CONF = "/etc/apt/apt.conf.d/00gpuprov-lab-cache"


def use_apt_cache(container: Container, port: str) -> None:
    """Fetch the Debian archive through the apt cache (apt-cacher-ng) listening on `port` on this
    machine, which the container reaches at its network's gateway. Other repositories go direct."""
    rc, out = container.exec_run(["ip", "-4", "route", "show", "default"])
    words = out.decode().split()
    if rc != 0 or len(words) < 3 or words[0] != "default" or words[1] != "via":
        raise RuntimeError(f"{container.name}: no default route to reach the apt cache ({out.decode().strip()!r})")
    line = f'Acquire::http::Proxy::deb.debian.org "http://{words[2]}:{int(port)}";'
    rc, out = container.exec_run(["sh", "-c", f"printf '%s\\n' '{line}' > {APT_CACHE_CONF}"])
    if rc != 0:
        raise RuntimeError(f"{container.name}: could not write {APT_CACHE_CONF}: {out.decode().strip()}")


def inventory_for(hosts: Iterable[LabHost], subnet: str = "", controller: str = "") -> dict:
    """The lab inventory; `subnet` is the lab network's and `controller` this machine's address on
    it (the network's gateway), the one API client the lab's firewall lets in."""
    groups: dict[str, dict] = {}
    for h in hosts:
        groups.setdefault(h.group, {"hosts": {}})["hosts"][h.name] = {"gpuprov_lab_os": h.os}
    inventory: dict = {"all": {"children": groups}}
    lab_vars = {k: v for k, v in (("gpuprov_lab_subnet", subnet), ("gpuprov_lab_controller", controller)) if v}
    if lab_vars:
        inventory["all"]["vars"] = lab_vars
    return inventory


def network_addresses(dc: docker.DockerClient) -> tuple[str, str]:
    """(subnet, gateway) of the lab network's IPv4 range."""
    configs = dc.networks.get(NETWORK).attrs.get("IPAM", {}).get("Config") or []
    v4 = next((c for c in configs if "." in c.get("Subnet", "")), {})
    if not v4.get("Gateway"):
        raise RuntimeError(f"the Docker network {NETWORK} has no IPv4 gateway: the lab's firewall lets in "
                           "this machine at that address")
    return v4.get("Subnet", ""), v4["Gateway"]


def write_inventory(hosts: Iterable[LabHost], subnet: str = "", controller: str = "") -> Path:
    path = paths.lab_inventory_dir() / "hosts.yml"
    body = yaml.safe_dump(inventory_for(hosts, subnet, controller), sort_keys=True)
    path.write_text("---\n# Written by `gpuprov lab up`; do not edit.\n" + body, encoding="utf-8")
    return path


def forget_facts(names: Iterable[str]) -> list[Path]:
    """Remove these hosts' entries from the lab's fact cache; returns the files removed.

    A lab container that is created or started again may get another address on the lab network
    (Docker hands them out anew), and `gathering = smart` would otherwise take its cached facts
    for up to a day: certificates, firewall rules and scrape targets made for the old address."""
    cache = paths.fact_cache_dir([str(paths.lab_inventory_dir())])
    if not cache.is_dir():
        return []
    wanted = set(names)
    # ansible-core's jsonfile cache names a host's file after it, behind a schema prefix (s1_).
    gone = [f for f in cache.iterdir() if f.name in wanted or f.name.partition("_")[2] in wanted]
    for f in gone:
        f.unlink(missing_ok=True)
    return gone


def lab_containers(dc: docker.DockerClient) -> list[Container]:
    return sorted(dc.containers.list(all=True, filters={"label": LABEL}), key=lambda c: c.name)


def up(hosts: list[LabHost], build: bool = True) -> list[str]:
    """Start the lab hosts (idempotent) and write the inventory; returns host names."""
    if build:
        build_images(h.os for h in hosts)
    dc = client()
    try:
        dc.networks.get(NETWORK)
    except NotFound:
        dc.networks.create(NETWORK, driver="bridge", labels={LABEL: "1"})
    wanted = {h.name for h in hosts}
    removed = [c for c in lab_containers(dc) if c.name not in wanted]
    for c in removed:
        c.remove(force=True)
    # Every lab host's facts are gathered again: a container created or restarted here may have a
    # new address (one gather per host, in the run that follows).
    forget_facts(wanted | {c.name for c in removed})
    for h in hosts:
        try:
            c = dc.containers.get(h.name)
            if c.labels.get("gpuprov.os") != h.os:
                c.remove(force=True)
                raise NotFound("replaced")
            if c.status != "running":
                c.start()
        except NotFound:
            c = dc.containers.run(**_run_kwargs(h))
        wait_for_systemd(c)
        # GPUPROV_APT_CACHE_PORT: an apt cache on this machine (scripts/test starts one) that every
        # lab host fetches Debian's packages through.
        if os.environ.get("GPUPROV_APT_CACHE_PORT"):
            use_apt_cache(c, os.environ["GPUPROV_APT_CACHE_PORT"])
    write_inventory(hosts, *network_addresses(dc))
    return [h.name for h in hosts]


def down() -> list[str]:
    dc = client()
    removed = []
    for c in lab_containers(dc):
        c.remove(force=True)
        removed.append(c.name)
    forget_facts(removed)
    try:
        dc.networks.get(NETWORK).remove()
    except NotFound:
        pass
    inv = paths.lab_inventory_dir() / "hosts.yml"
    inv.unlink(missing_ok=True)
    return removed


def status() -> list[tuple[str, str, str, str]]:
    """(name, os, container state, systemd state) for each lab container."""
    rows = []
    for c in lab_containers(client()):
        sd = "-"
        if c.status == "running":
            _, out = c.exec_run(["systemctl", "is-system-running"])
            sd = out.decode().strip()
        rows.append((c.name, c.labels.get("gpuprov.os", "?"), c.status, sd))
    return rows
