"""gpuprov command line: apply, check, verify, facts, lab."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from gpuprov import __version__, display, paths

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CHANGES = 2
EXIT_USAGE = 64

EPILOG = """\
exit codes:
  0   success (check: no changes; verify: every check passed)
  1   a task or a verify check failed, a host was unreachable, or the command could not run
  2   check: changes found (the hosts have drifted from the repository)
  64  bad command-line usage

Every run keeps its ansible-runner artifacts and a summary.json under
.gpuprov/runs/<UTC time>-<command>/.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit 2 means "changes found" here
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--inventory", action="append", default=[],
                   help="inventory path (repeatable); default: the lab inventory")
    p.add_argument("-l", "--limit", help="limit to these hosts or groups")


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


def _print_failures(result) -> None:
    for hp in sorted(result.tracker.hosts.values(), key=lambda h: h.host):
        for task in hp.failed_tasks:
            print(f"FAILED {hp.host}: {task}")


def _print_run_error(result) -> None:
    """A run that ended before any host's recap (a playbook that did not parse, say)."""
    if result.rc != 0 and not result.recaps:
        print(f"gpuprov: ansible-playbook exited {result.rc} ({result.status}); "
              f"see {result.run_dir}/artifacts/run/stdout", file=sys.stderr)


def run_play(args: argparse.Namespace, check: bool) -> int:
    from gpuprov import runner, tasks

    missing = _inventory_missing(args.inventory)
    if missing:
        print(f"gpuprov: {missing}", file=sys.stderr)
        return EXIT_FAILED
    req = _play_request(args, check)
    progress = display.Progress()
    progress_total = tasks.task_total(req, [str(i) for i in args.inventory])

    def on_event(tracker, event):
        tracker.task_total = progress_total
        progress(tracker, event)

    result = runner.run(req, on_event=on_event)
    print()
    print(display.recap_table(result.recaps))
    _print_failures(result)
    if check:
        by_host = result.tracker.changes_by_host()
        for host in sorted(by_host):
            print(f"\n{host}: {len(by_host[host])} task(s) would change")
            for change in by_host[host]:
                print(f"  - {change.label()}")
        if not by_host and not result.failed:
            print("\nno changes: the hosts match the repository")
    print(f"\nartifacts: {result.run_dir}")
    if result.failed:
        _print_run_error(result)
        return EXIT_FAILED
    if check and result.tracker.changes:
        return EXIT_CHANGES
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    from gpuprov import runner, verify

    missing = _inventory_missing(args.inventory)
    if missing:
        print(f"gpuprov: {missing}", file=sys.stderr)
        return EXIT_FAILED
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
        print(display.table(verify.HEADERS, collector.rows()))
    counts = {r: sum(1 for c in collector.checks if c.result == r) for r in (verify.PASS, verify.FAIL, verify.SKIP)}
    print(f"\n{counts[verify.PASS]} passed, {counts[verify.FAIL]} failed, {counts[verify.SKIP]} not applicable")
    print(f"artifacts: {result.run_dir}")
    if result.failed:
        _print_run_error(result)
        return EXIT_FAILED
    if not collector.checks:
        print("gpuprov: no check ran (no host in the playbook's groups?)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if collector.failed() else EXIT_OK


def run_facts(args: argparse.Namespace) -> int:
    from gpuprov import facts

    missing = _inventory_missing(args.inventory)
    if missing:
        print(f"gpuprov: {missing}", file=sys.stderr)
        return EXIT_FAILED
    result, collector = facts.gather(args.inventory, args.limit)
    rows = [facts.row(h, collector.facts[h]) for h in sorted(collector.facts)]
    print(display.table(facts.HEADERS, rows))
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
        return run_play(apply_args, check=False)
    if args.lab_command == "down":
        removed = lab.down()
        print(f"lab down: removed {', '.join(removed) or 'nothing'}")
        return EXIT_OK
    rows = lab.status()
    if not rows:
        print("lab: no containers (run `gpuprov lab up`)")
        return EXIT_OK
    print(display.table(("host", "os", "container", "systemd"), rows))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "apply":
        return run_play(args, check=False)
    if args.command == "check":
        return run_play(args, check=True)
    if args.command == "verify":
        return run_verify(args)
    if args.command == "facts":
        return run_facts(args)
    return run_lab(args)
