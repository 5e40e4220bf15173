"""The local lab: systemd containers from the gpuprov Debian images, managed with the Docker SDK.

`up` starts them (building the images first when their recipe changed): the GPU hosts and one
monitoring host, waits until systemd is running in each, starts sshd there with the host's own keys
and the lab's key authorised, and writes `inventories/lab/hosts.yml` and a known_hosts of the lab's
own: Ansible reaches the lab's hosts over SSH with host keys checked, as it reaches a fleet. The
host keys are read through Docker (a trusted path: this machine's root), never taken on first use.
`down` removes them; `status` lists them.
Containers follow the one systemd container recipe (gpuprov/systemd_container.py), as the Molecule
scenarios' and the base images' do.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import docker
import yaml
from docker.errors import NotFound
from docker.models.containers import Container

from gpuprov import paths, systemd_container

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


# Seconds to wait for one answer of the Docker engine (the SDK's default is 60): a loaded host's
# engine took longer than that to remove a lab container (`lab down` failed with "Read timed out").
DOCKER_TIMEOUT_S = 300
# Seconds to connect to a lab host over SSH (Ansible's default is 10): the lab's hosts share this
# machine's processors, and beside a test suite a host's handshake and Mitogen's start there took
# longer ("Connection timed out" at Gathering Facts, 11.9 s, on 2026-12-05).
LAB_SSH_TIMEOUT_S = 60


def client() -> docker.DockerClient:
    return docker.from_env(timeout=DOCKER_TIMEOUT_S)


def build_images(names: Iterable[str]) -> None:
    script = paths.repo_root() / "scripts" / "build-test-images"
    subprocess.run([str(script), *sorted(set(names))], check=True)


def _run_kwargs(host: LabHost) -> dict:
    # One apt cache per host: two containers sharing /var/cache/apt/archives fight over its lock.
    cache = Path(paths.state_dir() / "apt-cache" / host.os / host.name)
    cache.mkdir(parents=True, exist_ok=True)
    kwargs = systemd_container.docker_sdk_kwargs(cache)
    # The lab's own addition to the recipe: /tmp in memory, executable (as a real host's /tmp is).
    kwargs["tmpfs"] = {**kwargs["tmpfs"], "/tmp": "rw,exec"}
    return dict(
        kwargs,
        image=host.image,
        name=host.name,
        hostname=host.name,
        detach=True,
        labels={LABEL: "1", "gpuprov.group": host.group, "gpuprov.os": host.os},
        network=NETWORK,
    )


def _exec(container: Container, argv: list[str]) -> tuple[int | None, str]:
    """`docker exec` of argv, not streamed: its exit status and its output as text."""
    rc, out = container.exec_run(argv)
    return rc, (out if isinstance(out, bytes) else b"".join(out)).decode()


def _name(container: Container) -> str:
    return str(container.name)


def wait_for_systemd(container: Container, timeout_s: float = 90.0) -> str:
    """Wait until systemd in `container` is running (or degraded); return its state."""
    deadline = time.monotonic() + timeout_s
    state = "unknown"
    while time.monotonic() < deadline:
        _, out = _exec(container, ["systemctl", "is-system-running"])
        state = out.strip() or "unknown"
        if state in ("running", "degraded"):
            return state
        time.sleep(1)
    raise TimeoutError(f"{container.name}: systemd did not come up within {timeout_s:.0f}s (state {state})")


APT_CACHE_CONF = "/etc/apt/apt.conf.d/00gpuprov-lab-cache"


def use_apt_cache(container: Container, port: str) -> None:
    """Fetch the Debian archive through the apt cache (apt-cacher-ng) listening on `port` on this
    machine, which the container reaches at its network's gateway. Other repositories go direct."""
    rc, out = _exec(container, ["ip", "-4", "route", "show", "default"])
    words = out.split()
    if rc != 0 or len(words) < 3 or words[0] != "default" or words[1] != "via":
        raise RuntimeError(f"{container.name}: no default route to reach the apt cache ({out.strip()!r})")
    line = f'Acquire::http::Proxy::deb.debian.org "http://{words[2]}:{int(port)}";'
    rc, out = _exec(container, ["sh", "-c", f"printf '%s\\n' '{line}' > {APT_CACHE_CONF}"])
    if rc != 0:
        raise RuntimeError(f"{container.name}: could not write {APT_CACHE_CONF}: {out.strip()}")


def ssh_dir() -> Path:
    """The lab's SSH key pair and known_hosts (`.gpuprov/lab-ssh/`)."""
    return paths.state_dir() / "lab-ssh"


def ensure_key() -> Path:
    """The lab's SSH key (ed25519, no passphrase: a throwaway for local containers), made once."""
    key = ssh_dir() / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpuprov-lab", "-f", str(key)],
                           check=True, capture_output=True)
        except FileNotFoundError:
            raise RuntimeError("ssh-keygen is missing: the lab's hosts are reached over SSH "
                               "(apt-get install openssh-client)") from None
    return key


# Make the host's SSH keys (only those missing: a container started again keeps its own), authorise
# the lab's key for root, start sshd, print the host's ed25519 public key.
_SSHD_UP = """set -e
ssh-keygen -A >/dev/null
install -d -m 0700 /root/.ssh
printf '%s\n' {pub} > /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
systemctl enable --now ssh.service >/dev/null
cat /etc/ssh/ssh_host_ed25519_key.pub"""


def start_sshd(container: Container, public_key: str) -> str:
    """Start sshd in `container` with the lab's key authorised; returns the host's ed25519 key."""
    rc, out = _exec(container, ["sh", "-c", _SSHD_UP.format(pub=shlex.quote(public_key.strip()))])
    text = out.strip()
    words = text.splitlines()[-1].split() if text else []
    if rc != 0 or len(words) < 2 or words[0] != "ssh-ed25519":
        raise RuntimeError(f"{container.name}: sshd did not start ({text[-300:]!r})")
    return f"{words[0]} {words[1]}"


def address_of(container: Container) -> str:
    """The container's IPv4 address on the lab network."""
    container.reload()
    ip = (container.attrs["NetworkSettings"]["Networks"].get(NETWORK) or {}).get("IPAddress", "")
    if not ip:
        raise RuntimeError(f"{container.name} has no address on the Docker network {NETWORK}")
    return ip


def write_known_hosts(keys: dict[str, str]) -> Path:
    """known_hosts of the lab's own: {address: "type key"}; replaced whole (an address that Docker
    hands to another container later must not keep the old host's key)."""
    path = ssh_dir() / "known_hosts"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{addr} {key}\n" for addr, key in sorted(keys.items())), encoding="utf-8")
    tmp.replace(path)
    return path


def inventory_for(hosts: Iterable[LabHost], subnet: str = "", controller: str = "",
                  addresses: dict[str, str] | None = None) -> dict:
    """The lab inventory; `subnet` is the lab network's and `controller` this machine's address on
    it (the network's gateway), the one API client the lab's firewall lets in; `addresses` the
    hosts' own (SSH goes there, checked against the lab's known_hosts)."""
    groups: dict[str, dict] = {}
    for h in hosts:
        host_vars = {"gpuprov_lab_os": h.os}
        if addresses and h.name in addresses:
            host_vars["ansible_host"] = addresses[h.name]
        groups.setdefault(h.group, {"hosts": {}})["hosts"][h.name] = host_vars
    inventory: dict = {"all": {"children": groups}}
    lab_vars: dict[str, str | int] = {
        k: v for k, v in (("gpuprov_lab_subnet", subnet), ("gpuprov_lab_controller", controller)) if v}
    if addresses:
        lab_vars["ansible_ssh_private_key_file"] = str(ssh_dir() / "id_ed25519")
        lab_vars["ansible_ssh_timeout"] = LAB_SSH_TIMEOUT_S
        lab_vars["ansible_ssh_common_args"] = (
            f"-o UserKnownHostsFile={shlex.quote(str(ssh_dir() / 'known_hosts'))} -o StrictHostKeyChecking=yes")
    if lab_vars:
        inventory["all"]["vars"] = lab_vars
    return inventory


def network_addresses(dc: docker.DockerClient) -> tuple[str, str]:
    """(subnet, gateway) of the lab network's IPv4 range."""
    configs = dc.networks.get(NETWORK).attrs.get("IPAM", {}).get("Config") or []
    v4: dict[str, str] = next((c for c in configs if "." in c.get("Subnet", "")), {})
    if not v4.get("Gateway"):
        raise RuntimeError(f"the Docker network {NETWORK} has no IPv4 gateway: the lab's firewall lets in "
                           "this machine at that address")
    return v4.get("Subnet", ""), v4["Gateway"]


def write_inventory(hosts: Iterable[LabHost], subnet: str = "", controller: str = "",
                    addresses: dict[str, str] | None = None) -> Path:
    path = paths.lab_inventory_dir() / "hosts.yml"
    body = yaml.safe_dump(inventory_for(hosts, subnet, controller, addresses), sort_keys=True)
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
    return sorted(dc.containers.list(all=True, filters={"label": LABEL}), key=_name)


def up(hosts: list[LabHost], build: bool = True) -> list[str]:
    """Start the lab hosts (idempotent) and write the inventory; returns host names."""
    if build:
        build_images(h.os for h in hosts)
    public_key = ensure_key().with_suffix(".pub").read_text(encoding="utf-8")
    dc = client()
    try:
        dc.networks.get(NETWORK)
    except NotFound:
        dc.networks.create(NETWORK, driver="bridge", labels={LABEL: "1"})
    wanted = {h.name for h in hosts}
    removed = [c for c in lab_containers(dc) if _name(c) not in wanted]
    for c in removed:
        c.remove(force=True)
    # Every lab host's facts are gathered again: a container created or restarted here may have a
    # new address (one gather per host, in the run that follows).
    forget_facts(wanted | {_name(c) for c in removed})
    addresses: dict[str, str] = {}
    host_keys: dict[str, str] = {}
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
        addresses[h.name] = address_of(c)
        host_keys[addresses[h.name]] = start_sshd(c, public_key)
    write_known_hosts(host_keys)
    write_inventory(hosts, *network_addresses(dc), addresses=addresses)
    return [h.name for h in hosts]


def down() -> list[str]:
    dc = client()
    removed: list[str] = []
    for c in lab_containers(dc):
        c.remove(force=True)
        removed.append(_name(c))
    forget_facts(removed)
    try:
        dc.networks.get(NETWORK).remove()
    except NotFound:
        pass
    inv = paths.lab_inventory_dir() / "hosts.yml"
    inv.unlink(missing_ok=True)
    (ssh_dir() / "known_hosts").unlink(missing_ok=True)
    return removed


def status() -> list[tuple[str, str, str, str]]:
    """(name, os, container state, systemd state) for each lab container."""
    rows = []
    for c in lab_containers(client()):
        sd = "-"
        if c.status == "running":
            _, out = _exec(c, ["systemctl", "is-system-running"])
            sd = out.strip()
        rows.append((_name(c), c.labels.get("gpuprov.os", "?"), c.status, sd))
    return rows
