"""`gpuprov schedule`: drift detection on a schedule, as a systemd timer on the controller.

`install` writes `gpuprov-drift-<inventory>.service` (one `gpuprov drift` run: a JSON report and
Prometheus metrics) and its `.timer`, then enables the timer when systemd runs here. The metrics go
to node exporter's textfile directory when the controller has one (the monitoring host scrapes them
with the node job; the ConfigurationDrift and DriftCheckStale alerts read them), else beside the
inventory's drift history. A drift run that finds drift (exit 2) is a successful run of the unit.
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gpuprov import paths

UNIT_DIR = Path("/etc/systemd/system")
TEXTFILE_DIR = Path("/var/lib/prometheus/node-exporter")


@dataclass
class Schedule:
    inventories: list[str]
    on_calendar: str = "hourly"
    metrics_file: Path | None = None
    playbook: str = "playbooks/site.yml"
    user: str = ""

    @property
    def key(self) -> str:
        return paths.inventory_key(self.inventories)

    @property
    def name(self) -> str:
        return f"gpuprov-drift-{self.key}"

    def metrics_path(self) -> Path:
        if self.metrics_file:
            return Path(self.metrics_file).resolve()
        if TEXTFILE_DIR.is_dir():
            return TEXTFILE_DIR / f"gpuprov_drift_{self.key}.prom"
        return paths.state_dir() / "drift" / self.key / "gpuprov_drift.prom"

    def command(self) -> list[str]:
        root = paths.repo_root()
        cmd = [str(root / "scripts" / "gpuprov"), "drift"]
        for inv in self.inventories:
            cmd += ["-i", str(Path(inv).resolve())]
        cmd += ["--playbook", self.playbook, "--wait-lock", "3600", "--format", "json",
                "-o", str(paths.state_dir() / "drift" / self.key / "last.json"),
                "--metrics-file", str(self.metrics_path())]
        return cmd


def calendar_ok(spec: str) -> str | None:
    """None when systemd accepts the calendar spec, else its words."""
    r = subprocess.run(["systemd-analyze", "calendar", spec], capture_output=True, text=True, check=False)
    return None if r.returncode == 0 else (r.stderr.strip() or r.stdout.strip() or "invalid calendar spec")


def service_unit(s: Schedule) -> str:
    root = paths.repo_root()
    user = s.user or getpass.getuser()
    return f"""# Written by `gpuprov schedule install`; `gpuprov schedule remove` removes it.
[Unit]
Description=gpuprov drift of inventory {s.key}
Documentation=file://{root}/README.md
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
User={user}
WorkingDirectory={root}
Environment=GPUPROV_ROOT={root}
ExecStart={shlex.join(s.command()).replace('%', '%%')}
# 2 is "drift found": a result, reported through the report and the metrics, not a failed run.
SuccessExitStatus=2
TimeoutStartSec=3h
Nice=10
IOSchedulingClass=idle
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=full
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
"""


def timer_unit(s: Schedule) -> str:
    return f"""# Written by `gpuprov schedule install`; `gpuprov schedule remove` removes it.
[Unit]
Description=gpuprov drift of inventory {s.key}, on a schedule

[Timer]
OnCalendar={s.on_calendar}
RandomizedDelaySec=5min
Persistent=true

[Install]
WantedBy=timers.target
"""


def _write(path: Path, text: str) -> bool:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return True


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def _systemctl(*args: str) -> None:
    subprocess.run(["systemctl", *args], check=True)


def install(s: Schedule, unit_dir: Path = UNIT_DIR) -> tuple[list[Path], bool]:
    """Write the units; enable and start the timer when systemd runs here. (paths, started)."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    service, timer = unit_dir / f"{s.name}.service", unit_dir / f"{s.name}.timer"
    changed = _write(service, service_unit(s)) | _write(timer, timer_unit(s))
    if unit_dir != UNIT_DIR or not systemd_running():
        return [service, timer], False
    if changed:
        _systemctl("daemon-reload")
    _systemctl("enable", "--now", timer.name)
    return [service, timer], True


def remove(s: Schedule, unit_dir: Path = UNIT_DIR) -> list[Path]:
    service, timer = unit_dir / f"{s.name}.service", unit_dir / f"{s.name}.timer"
    if unit_dir == UNIT_DIR and systemd_running() and timer.exists():
        subprocess.run(["systemctl", "disable", "--now", timer.name], check=False)
    removed = [p for p in (service, timer) if p.exists()]
    for p in removed:
        p.unlink()
    if removed and unit_dir == UNIT_DIR and systemd_running():
        _systemctl("daemon-reload")
    return removed
