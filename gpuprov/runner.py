"""Run playbooks and ad-hoc modules through the ansible-runner library.

Every run gets its own private data directory, `.gpuprov/runs/<UTC time>-<command>/`, holding
ansible-runner's artifacts and a `summary.json`. Nothing secret is written there: env files are
suppressed, `no_log` results are censored by Ansible, and the recorded command line and
environment are scrubbed after the run (extra-vars values and environment values are redacted).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ansible_runner

from gpuprov import paths, report
from gpuprov.events import RunTracker
from gpuprov.interrupt import forward_interrupts

REDACTED = "<redacted>"
STATS_KEYS = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored")


@dataclass
class RunRequest:
    """What to run: a playbook (relative to the repo) or an ad-hoc module."""

    command: str
    playbook: str | None = None
    module: str | None = None
    module_args: str | None = None
    host_pattern: str = "all"
    inventories: Sequence[str] = ()
    limit: str | None = None
    tags: str | None = None
    skip_tags: str | None = None
    extra_vars: Sequence[str] = ()
    check: bool = False
    diff: bool = False
    verbosity: int = 0
    vault_password_file: str | None = None


@dataclass
class HostRecap:
    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    duration_s: float = 0.0


@dataclass
class RunResult:
    rc: int
    status: str
    run_dir: Path
    recaps: list[HostRecap]
    tracker: RunTracker
    duration_s: float
    interrupted: str | None = None  # the signal's name when the run was stopped by SIGINT/SIGTERM

    @property
    def failed(self) -> bool:
        return self.rc != 0 or self.interrupted is not None or any(r.failed or r.unreachable for r in self.recaps)


def ansible_env() -> dict[str, str]:
    """Environment every run gets: the repo's ansible.cfg, wherever gpuprov is called from."""
    root = paths.repo_root()
    # ansible-runner starts ansible-playbook from PATH: use the one beside this interpreter.
    bindir = str(Path(sys.executable).parent)
    return {
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        # ansible-runner turns host key checking off unless the caller sets it, which would beat
        # ansible.cfg: every run would accept any host key, a changed one too. The lab checks
        # its hosts' keys as well (lab up writes a known_hosts of its own).
        "ANSIBLE_HOST_KEY_CHECKING": os.environ.get("ANSIBLE_HOST_KEY_CHECKING") or "True",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }


MITOGEN = "mitogen_linear"


def strategy_for(inventories: list[str]) -> str:
    """The strategy a run uses: the caller's ANSIBLE_STRATEGY, else Mitogen's (plugins/strategy/) for
    the lab (ansible.cfg's default inventory: local containers, where it was measured twice as fast
    for a no-op apply and a check), else Ansible's own `linear`. Other inventories opt in with
    ANSIBLE_STRATEGY=mitogen_linear."""
    if os.environ.get("ANSIBLE_STRATEGY"):
        return os.environ["ANSIBLE_STRATEGY"]
    return MITOGEN if paths.is_lab(inventories) else "linear"


def cmdline_string(args: list[str]) -> str:
    """ansible-runner takes extra command-line options as one string and splits it with shlex."""
    return shlex.join(args)


def build_cmdline(req: RunRequest) -> list[str]:
    args: list[str] = []
    if req.tags:
        args += ["--tags", req.tags]
    if req.skip_tags:
        args += ["--skip-tags", req.skip_tags]
    for ev in req.extra_vars:
        args += ["-e", ev]
    if req.check:
        args.append("--check")
    if req.diff:
        args.append("--diff")
    if req.vault_password_file:
        args += ["--vault-password-file", str(Path(req.vault_password_file).resolve())]
    return args


def _scrub_command_file(path: Path) -> None:
    """Redact extra-vars values and environment values from ansible-runner's `command` record."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    cmd = list(record.get("command") or [])
    for i, arg in enumerate(cmd[:-1]):
        if arg in ("-e", "--extra-vars") and not cmd[i + 1].startswith("@"):
            cmd[i + 1] = REDACTED
    record["command"] = cmd
    record["env"] = {k: REDACTED for k in (record.get("env") or {})}
    path.write_text(json.dumps(record), encoding="utf-8")


def scrub_artifacts(run_dir: Path) -> None:
    for command_file in run_dir.glob("artifacts/*/command"):
        _scrub_command_file(command_file)


def _recaps(stats: dict[str, Any] | None, tracker: RunTracker) -> list[HostRecap]:
    stats = stats or {}
    hosts = set(tracker.hosts)
    for key in STATS_KEYS:
        hosts.update((stats.get(key) or {}).keys())

    def count(key: str, host: str) -> int:
        return int((stats.get(key) or {}).get(host, 0))

    out = []
    for host in sorted(hosts):
        progress = tracker.hosts.get(host)
        out.append(
            HostRecap(
                host=host,
                ok=count("ok", host),
                changed=count("changed", host),
                failed=count("failures", host),
                unreachable=count("dark", host),
                skipped=count("skipped", host),
                duration_s=progress.duration_s if progress else 0.0,
            )
        )
    return out


def runner_kwargs(req: RunRequest, private_data_dir: Path, extra_args: Sequence[str] = (),
                  extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """ansible_runner.run's arguments for `req`: the one place every gpuprov run is built."""
    root = paths.repo_root()
    kwargs: dict[str, Any] = {
        "private_data_dir": str(private_data_dir),
        "project_dir": str(root),
        "envvars": {**ansible_env(), **(extra_env or {})},
        "cmdline": cmdline_string(build_cmdline(req) + list(extra_args)),
        "suppress_env_files": True,
        "quiet": True,
        # ansible-runner would keep facts in this run's artifacts, so no run would ever find the facts
        # of the run before (and a run with --limit none of the other hosts'): one cache per inventory,
        # kept across runs (an absolute path replaces ansible-runner's).
        "fact_cache": str(paths.fact_cache_dir(req.inventories)),
        # Without it ansible-runner installs signal handlers whose first Ctrl-C kills ansible-playbook's
        # process group (gpuprov.interrupt passes the signal on instead).
        "cancel_callback": lambda: False,
    }
    if req.limit:
        kwargs["limit"] = req.limit
    # Without -i, ansible.cfg's default inventory (the lab) applies.
    if req.inventories:
        kwargs["inventory"] = [str(Path(i).resolve()) for i in req.inventories]
    if req.playbook:
        kwargs["playbook"] = str(root / req.playbook)
    else:
        kwargs["module"] = req.module
        kwargs["module_args"] = req.module_args or ""
        kwargs["host_pattern"] = req.host_pattern
    return kwargs


def run(
    req: RunRequest,
    on_event: Callable[[RunTracker, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run `req` through ansible_runner.run and return its result; writes summary.json."""
    run_dir = paths.new_run_dir(req.command)
    tracker = RunTracker()
    strategy = strategy_for(list(req.inventories))

    def handler(event: dict[str, Any]) -> bool:
        tracker.handle(event)
        if on_event is not None:
            on_event(tracker, event)
        return True

    kwargs = runner_kwargs(req, run_dir, extra_env={"ANSIBLE_STRATEGY": strategy})
    kwargs.update(ident="run", event_handler=handler, verbosity=req.verbosity or None)

    started = time.monotonic()
    started_at = datetime.now(UTC)
    try:
        with forward_interrupts() as interrupt:
            kwargs["cancel_callback"] = interrupt.cancel
            r = ansible_runner.run(**kwargs)
    finally:
        scrub_artifacts(run_dir)
    duration = time.monotonic() - started
    tracker.reconcile(dict((r.stats or {}).get("changed") or {}))
    result = RunResult(
        rc=int(r.rc if r.rc is not None else 1),
        status=str(r.status),
        run_dir=run_dir,
        recaps=_recaps(r.stats, tracker),
        tracker=tracker,
        duration_s=duration,
        interrupted=interrupt.signal_name,
    )
    report.write_summary(req, result, started_at, strategy)
    return result
