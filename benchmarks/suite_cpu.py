"""Where a test run's processor time goes outside the steps' own processes: each Docker container's
(its cgroup, every process in it), the Docker engine's (dockerd, containerd, the shims) and the
machine's total, sampled until the command it runs beside ends.

    python benchmarks/suite_cpu.py OUT.json -- scripts/test ...

Containers are grouped by their name without the platform suffix (`gpuprov-gateway-debian12` ->
`gpuprov-gateway`). Linux with cgroup v1's cpuacct (this machine) or v2; seconds of processor time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
V1 = Path("/sys/fs/cgroup/cpuacct/docker")
V2 = Path("/sys/fs/cgroup/system.slice")
ENGINE = ("dockerd", "containerd", "runc", "docker-proxy")  # and every containerd-shim*


def container_usage() -> dict[str, float]:
    """Processor seconds of each running container, by full ID."""
    out: dict[str, float] = {}
    if V1.is_dir():
        for d in V1.iterdir():
            f = d / "cpuacct.usage"
            if d.is_dir() and f.exists():
                out[d.name] = int(f.read_text()) / 1e9
    elif V2.is_dir():
        for d in V2.glob("docker-*.scope"):
            for line in (d / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    out[d.name[len("docker-"):-len(".scope")]] = int(line.split()[1]) / 1e6
    return out


def engine_processes() -> dict[int, tuple[str, float]]:
    """The Docker engine's processes: pid -> (name, processor seconds so far)."""
    out: dict[int, tuple[str, float]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name in ENGINE or name.startswith("containerd-shim"):
            fields = stat[stat.rindex(")") + 2:].split()
            out[int(p.name)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def machine_busy() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    return (sum(values) - values[3] - values[4]) / TICK  # all but idle and iowait


def names() -> dict[str, str]:
    ps = subprocess.run(["docker", "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}"],
                        capture_output=True, text=True, check=False).stdout
    return dict(line.split(" ", 1) for line in ps.splitlines() if " " in line)


def main() -> int:
    out_path, argv = Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1:]
    start_busy, start = machine_busy(), time.monotonic()
    containers: dict[str, float] = {}
    containers_start = container_usage()  # those already running count from here
    engine: dict[int, tuple[str, float]] = {}
    engine_start = {pid: cpu for pid, (_, cpu) in engine_processes().items()}
    named: dict[str, str] = {}
    child = subprocess.Popen(argv)
    while True:
        done = child.poll() is not None
        usage = container_usage()
        if set(usage) - set(named):
            named.update(names())
        containers.update({cid: max(cpu, containers.get(cid, 0.0)) for cid, cpu in usage.items()})
        engine.update(engine_processes())
        if done:
            break
        time.sleep(5)
    groups: dict[str, float] = {}
    containers = {cid: cpu - containers_start.get(cid, 0.0) for cid, cpu in containers.items()}
    for cid, cpu in containers.items():
        name = named.get(cid, cid[:12])
        for suffix in ("-debian12", "-debian13"):
            name = name.removesuffix(suffix)
        groups[name] = groups.get(name, 0.0) + cpu
    by_engine: dict[str, float] = {}
    for pid, (name, cpu) in engine.items():
        key = "containerd-shim" if name.startswith("containerd-shim") else name
        by_engine[key] = by_engine.get(key, 0.0) + cpu - engine_start.get(pid, 0.0)
    result = {"command": argv, "rc": child.returncode, "wall_s": round(time.monotonic() - start),
              "machine_busy_s": round(machine_busy() - start_busy),
              "containers_s": round(sum(containers.values())),
              "engine_s": {k: round(v) for k, v in sorted(by_engine.items(), key=lambda kv: -kv[1])},
              "by_container_group_s": {k: round(v) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}}
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
