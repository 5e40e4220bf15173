"""gpuprov command line: apply, check, verify, facts, lab."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from gpuprov import __version__, display, paths, report

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CHANGES = 2
EXIT_USAGE = 64
EXIT_LOCKED = 75  # EX_TEMPFAIL: try again when the other run ends
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shells' convention

EPILOG = """\
exit codes:
  0   success (check: no changes; verify: every check passed)
  1   a task or a verify check failed, a host was unreachable, or the command could not run
  2   check, drift: changes found (the hosts have drifted from the repository)
  64  bad command-line usage
  75  another run holds this inventory's lock (it is named; --wait-lock waits for it)
  130 interrupted (Ctrl-C or SIGTERM): Ansible stopped part-way; apply again to converge

Every run keeps its ansible-runner artifacts and a summary.json under
.gpuprov/runs/<UTC time>-<command>/.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # exit 2 means "changes found" here
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--inventory", action="append", default=[],
                   help="inventory path (repeatable); default: the lab inventory")
    p.add_argument("-l", "--limit", help="limit to these hosts or groups")
    _add_lock_arg(p)


def _add_lock_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait-lock", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another run on the same inventory to end (default: exit 75 at once)")


def _add_play_args(p: argparse.ArgumentParser) -> None:
    _add_target_args(p)
    p.add_argument("-t", "--tags", help="only tasks with these tags (comma separated)")
    p.add_argument("--skip-tags", help="skip tasks with these tags")
    p.add_argument("-e", "--extra-vars", action="append", default=[],
                   help="extra variables, key=value or @file (repeatable); use @vault files for secrets")
    p.add_argument("--vault-password-file", help="file holding the ansible-vault password")
    p.add_argument("--playbook", default="playbooks/site.yml", help="playbook, relative to the repo")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more Ansible output in the artifacts")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gpuprov",
        description="Provision and keep GPU servers as local DeepSeek inference hosts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gpuprov {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("apply", help="apply playbooks/site.yml to the hosts")
    _add_play_args(p)
    p = sub.add_parser("check", help="dry run (--check --diff): list what would change per host")
    _add_play_args(p)
    p = sub.add_parser("drift", help="check mode over the fleet: compliant/drifted/failed/unreachable per host, "
                                      "with diffs and since when (table, JSON, JUnit XML, Markdown)")
    _add_play_args(p)
    p.add_argument("--format", choices=("table", "json", "junit", "markdown"), default="table",
                   help="report format (default: table)")
    p.add_argument("-o", "--output", help="write the report to this file (default: standard output)")
    p.add_argument("--metrics-file", metavar="PATH",
                   help="also write the report as Prometheus metrics (a *.prom file in node exporter's "
                        "textfile directory is scraped with the node job)")
    p = sub.add_parser("fix", help="apply to the drifted hosts only, in batches, then drift again (before/after)")
    _add_play_args(p)
    p.add_argument("--from-last", action="store_true",
                   help="the drifted hosts of the inventory's last drift report, not a fresh drift run")
    p.add_argument("--batch-size", default="100%",
                   help="hosts per batch: N or P%% of the drifted hosts (default 100%%)")
    p.add_argument("--max-fail-percentage", type=float, default=0.0,
                   help="stop before the next batch once more than this share of the hosts failed (default 0)")
    p = sub.add_parser("schedule", help="drift on a schedule: a systemd timer on this controller (report + metrics)")
    sched = p.add_subparsers(dest="schedule_command", required=True, parser_class=_Parser)
    for name, text in (("install", "write and enable the timer and its service"),
                       ("remove", "disable and remove them"), ("show", "print the units install would write")):
        q = sched.add_parser(name, help=text)
        q.add_argument("-i", "--inventory", action="append", default=[],
                       help="inventory path (repeatable); default: the lab inventory")
        q.add_argument("--unit-dir", default=None,
                       help="write the units here instead of /etc/systemd/system (then nothing is enabled)")
        if name != "remove":
            q.add_argument("--on-calendar", default="hourly", help="systemd calendar spec (default: hourly)")
            q.add_argument("--metrics-file", help="where the metrics go (default: node exporter's textfile "
                                                   "directory when this machine has one)")
            q.add_argument("--playbook", default="playbooks/site.yml", help="playbook, relative to the repo")
    p = sub.add_parser("verify", help="read-only checks of converged hosts: a pass/FAIL/skip table per host")
    _add_target_args(p)
    p.add_argument("-e", "--extra-vars", action="append", default=[],
                   help="extra variables, key=value or @file (repeatable); the inventory's settings apply")
    p.add_argument("--vault-password-file", help="file holding the ansible-vault password")
    p.add_argument("--playbook", default="playbooks/verify.yml", help="playbook, relative to the repo")
    p = sub.add_parser("facts", help="table of each host's OS, kernel, CPU, memory and GPUs")
    _add_target_args(p)

    lab = sub.add_parser("lab", help="local lab of systemd containers")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, parser_class=_Parser)
    up = lab_sub.add_parser("up", help="start the lab containers, write the lab inventory, apply site.yml")
    up.add_argument("--os", default="debian12", choices=["debian12", "debian13"])
    up.add_argument("--hosts", type=int, default=1, help="number of GPU-server containers")
    up.add_argument("--no-apply", action="store_true", help="start the containers only")
    _add_lock_arg(up)
    lab_sub.add_parser("down", help="remove the lab containers and their inventory")
    lab_sub.add_parser("status", help="list the lab containers")
    return parser


def _play_request(args: argparse.Namespace, check: bool):
    from gpuprov.runner import RunRequest

    return RunRequest(
        command="check" if check else "apply",
        playbook=args.playbook,
        inventories=args.inventory,
        limit=args.limit,
        tags=args.tags,
        skip_tags=args.skip_tags,
        extra_vars=args.extra_vars,
        check=check,
        diff=check,
        verbosity=args.verbose,
        vault_password_file=args.vault_password_file,
    )


def _inventory_missing(inventories: Sequence[str]) -> str | None:
    if inventories:
        return None
    if not (paths.lab_inventory_dir() / "hosts.yml").exists():
        return "the lab inventory has no hosts: run `gpuprov lab up` first, or pass -i INVENTORY"
    return None


def _print_run_error(result) -> None:
    """A run that ended before any host's recap (a playbook that did not parse, say)."""
    if result.rc != 0 and not result.recaps:
        print(f"gpuprov: ansible-playbook exited {result.rc} ({result.status}); "
              f"see {result.run_dir}/artifacts/run/stdout", file=sys.stderr)


def _interrupted(result) -> int:
    print(f"gpuprov: interrupted ({result.interrupted}): Ansible stopped part-way; the hosts may be between "
          "two states: run apply again to converge them", file=sys.stderr)
    return EXIT_INTERRUPTED


def locked(command: str, fn: Callable[[argparse.Namespace], int],
           needs_inventory: bool = True) -> Callable[[argparse.Namespace], int]:
    """Run `fn` holding the inventory's lock: one run at a time per inventory on this controller.
    Unless `needs_inventory` is false (lab up writes it), a missing lab inventory is refused first."""

    def run(args: argparse.Namespace) -> int:
        from gpuprov.lock import LockHeld, inventory_lock

        missing = _inventory_missing(args.inventory) if needs_inventory else None
        if missing:
            print(f"gpuprov: {missing}", file=sys.stderr)
            return EXIT_FAILED
        try:
            with inventory_lock(list(getattr(args, "inventory", [])), command, args.wait_lock):
                return fn(args)
        except LockHeld as exc:
            print(f"gpuprov: {exc}; try again when it ends, or pass --wait-lock SECONDS", file=sys.stderr)
            return EXIT_LOCKED

    return run


def run_play(args: argparse.Namespace, check: bool) -> int:
    from gpuprov import runner, tasks

    req = _play_request(args, check)
    progress = display.Progress(total=tasks.task_total(req, [str(i) for i in args.inventory]))
    result = runner.run(req, on_event=progress)
    print(report.play_report(result, check))
    if result.interrupted:
        return _interrupted(result)
    if result.failed:
        _print_run_error(result)
        return EXIT_FAILED
    if check and result.tracker.changes:
        return EXIT_CHANGES
    return EXIT_OK


def run_drift(args: argparse.Namespace) -> int:
    from gpuprov import drift

    result, found = _drift_report(args, args.limit)
    if result.interrupted:
        return _interrupted(result)
    if found is None:
        _print_run_error(result)
        return EXIT_FAILED
    text = drift.RENDER[args.format](found)
    if args.metrics_file:
        drift.write_metrics(found, Path(args.metrics_file))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"drift report: {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    print(f"artifacts: {result.run_dir}", file=sys.stderr)
    return found.exit_code()


def _drift_report(args: argparse.Namespace, limit: str | None):
    """A check-mode run (progress on standard error) and its drift report (None when the run broke
    off or reached no host)."""
    from gpuprov import drift, runner

    req = _play_request(args, check=True)
    req.command, req.limit = "drift", limit
    result = runner.run(req, on_event=display.Progress(stream=sys.stderr))
    if result.interrupted or not result.recaps:
        return result, None
    return result, drift.build(result, list(args.inventory))


def run_fix(args: argparse.Namespace) -> int:
    from gpuprov import drift, fix, runner

    if args.from_last:
        history = drift.read_history(drift.history_path(list(args.inventory)))
        if not history:
            print("gpuprov: no drift report for this inventory yet: run `gpuprov drift` (or fix without --from-last)",
                  file=sys.stderr)
            return EXIT_FAILED
        before = dict(history[-1]["hosts"])
    else:
        result, found = _drift_report(args, args.limit)
        if found is None:
            return _interrupted(result) if result.interrupted else EXIT_FAILED
        before = {h.host: h.status for h in found.hosts}
    drifted = sorted(h for h, s in before.items() if s == drift.DRIFTED)
    if not drifted:
        print("nothing drifted: nothing to fix")
        return EXIT_OK if all(s == drift.COMPLIANT for s in before.values()) else EXIT_FAILED
    try:
        size = fix.batch_size(args.batch_size, len(drifted))
    except ValueError as exc:
        print(f"gpuprov: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rollout = fix.Rollout(args.max_fail_percentage, len(drifted))
    for n, batch in enumerate(fix.batches(drifted, size), 1):
        if rollout.over_limit():
            rollout.skipped += batch
            continue
        print(f"fix: batch {n}: {', '.join(batch)}", file=sys.stderr)
        req = _play_request(args, check=False)
        req.command, req.limit = "fix", ",".join(batch)
        result = runner.run(req, on_event=display.Progress(stream=sys.stderr))
        if result.interrupted:
            return _interrupted(result)
        bad = {r.host for r in result.recaps if r.failed or r.unreachable}
        if result.failed and not result.recaps:  # the run broke before any host's recap
            bad = set(batch)
        rollout.applied += [h for h in batch if h not in bad]
        rollout.failed += sorted(bad & set(batch))
    _, after_report = _drift_report(args, ",".join(drifted))
    after = {h.host: h.status for h in after_report.hosts} if after_report else {}
    rows = [(h, before[h], "applied" if h in rollout.applied else "FAILED" if h in rollout.failed else "not applied",
             after.get(h, "?")) for h in drifted]
    print(report.table(("host", "before", "fix", "after"), rows))
    if rollout.skipped:
        print(f"stopped: {len(rollout.failed)} of {len(drifted)} host(s) failed (over --max-fail-percentage "
              f"{args.max_fail_percentage:g}); not applied: {', '.join(rollout.skipped)}")
    if rollout.failed or any(after.get(h) in (drift.FAILED, drift.UNREACHABLE, None) for h in drifted):
        return EXIT_FAILED
    return EXIT_CHANGES if any(after.get(h) == drift.DRIFTED for h in drifted) else EXIT_OK


def run_schedule(args: argparse.Namespace) -> int:
    from gpuprov import schedule

    # remove has no schedule settings: the Schedule's own defaults name the same units.
    settings = {k: getattr(args, k) for k in ("on_calendar", "playbook") if hasattr(args, k)}
    metrics = getattr(args, "metrics_file", None)
    s = schedule.Schedule(list(args.inventory), metrics_file=Path(metrics) if metrics else None, **settings)
    unit_dir = Path(args.unit_dir) if args.unit_dir else schedule.UNIT_DIR
    if args.schedule_command == "remove":
        removed = schedule.remove(s, unit_dir)
        print(f"schedule: removed {', '.join(map(str, removed)) or 'nothing'}")
        return EXIT_OK
    problem = schedule.calendar_ok(s.on_calendar)
    if problem:
        print(f"gpuprov: --on-calendar {s.on_calendar!r}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.schedule_command == "show":
        print(f"# {unit_dir / (s.name + '.service')}\n{schedule.service_unit(s)}")
        print(f"# {unit_dir / (s.name + '.timer')}\n{schedule.timer_unit(s)}")
        return EXIT_OK
    written, started = schedule.install(s, unit_dir)
    print(f"schedule: {', '.join(map(str, written))}")
    print(f"metrics: {s.metrics_path()}")
    print(f"schedule: {s.name}.timer enabled and started ({s.on_calendar})" if started else
          "schedule: units written, not enabled (another directory, or systemd does not run here)")
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    from gpuprov import runner, verify

    req = runner.RunRequest(
        command="verify",
        playbook=args.playbook,
        inventories=args.inventory,
        limit=args.limit,
        extra_vars=args.extra_vars,
        vault_password_file=args.vault_password_file,
    )
    collector = verify.CheckCollector()
    result = runner.run(req, on_event=collector)
    if collector.checks:
        print(report.table(verify.HEADERS, collector.rows()))
    counts = {r: sum(1 for c in collector.checks if c.result == r) for r in (verify.PASS, verify.FAIL, verify.SKIP)}
    print(f"\n{counts[verify.PASS]} passed, {counts[verify.FAIL]} failed, {counts[verify.SKIP]} not applicable")
    print(f"artifacts: {result.run_dir}")
    if result.interrupted:
        return _interrupted(result)
    if result.failed:
        _print_run_error(result)
        return EXIT_FAILED
    if not collector.checks:
        print("gpuprov: no check ran (no host in the playbook's groups?)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if collector.failed() else EXIT_OK


def run_facts(args: argparse.Namespace) -> int:
    from gpuprov import facts

    result, collector = facts.gather(args.inventory, args.limit)
    rows = [facts.row(h, collector.facts[h]) for h in sorted(collector.facts)]
    print(report.table(facts.HEADERS, rows))
    for host, err in sorted(collector.errors.items()):
        print(f"{host}: {err}", file=sys.stderr)
    return EXIT_FAILED if collector.errors or result.rc != 0 else EXIT_OK


def run_lab(args: argparse.Namespace) -> int:
    from gpuprov import lab

    if args.lab_command == "up":
        try:
            hosts = lab.default_hosts(args.os, args.hosts)
        except ValueError as exc:
            print(f"gpuprov: {exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            names = lab.up(hosts)
        except RuntimeError as exc:  # a container or the lab network not as the lab needs it
            print(f"gpuprov: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"lab up: {', '.join(names)} (inventory: {paths.lab_inventory_dir() / 'hosts.yml'})")
        if args.no_apply:
            return EXIT_OK
        apply_args = build_parser().parse_args(["apply"])
        return run_play(apply_args, check=False)  # under lab up's lock
    if args.lab_command == "down":
        removed = lab.down()
        print(f"lab down: removed {', '.join(removed) or 'nothing'}")
        return EXIT_OK
    rows = lab.status()
    if not rows:
        print("lab: no containers (run `gpuprov lab up`)")
        return EXIT_OK
    print(report.table(("host", "os", "container", "systemd"), rows))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "apply": locked("apply", lambda a: run_play(a, check=False)),
    "check": locked("check", lambda a: run_play(a, check=True)),
    "drift": locked("drift", run_drift),
    "fix": locked("fix", run_fix),
    "schedule": run_schedule,
    "verify": locked("verify", run_verify),
    "facts": locked("facts", run_facts),
}


def _lab(args: argparse.Namespace) -> int:
    # lab up applies site.yml to the lab inventory: it holds that inventory's lock like apply does.
    if args.lab_command == "up":
        return locked("lab up", run_lab, needs_inventory=False)(args)
    return run_lab(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS.get(args.command, _lab)(args)
    except KeyboardInterrupt:  # outside a playbook run (a run turns the signal into "interrupted" itself)
        print("gpuprov: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except subprocess.CalledProcessError as exc:
        cmd = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd))
        print(f"gpuprov: {cmd} exited {exc.returncode} (its output is above)", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, TimeoutError) as exc:  # a missing program, Docker's socket, a container that hung
        print(f"gpuprov: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # Docker's API errors and the like: one line, never a traceback
        if type(exc).__module__.startswith("docker"):
            print(f"gpuprov: Docker: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise
