"""Fleet speed on the lab: `lab up`, a no-op `apply` and a `check` for 1, 2, 4 and 8 GPU hosts (plus the
monitoring host), one after another on one lab that grows, with the ratios against issue 14's goals:
a no-op apply and a check of the 2-host lab (one GPU host and the monitoring host) within 45 s each,
a check of 8 GPU hosts within 1.5x that of 1.

Each time comes with the controller's processor time in brackets (gpuprov's and Ansible's processes
on this machine, not the hosts' work).

usage: python benchmarks/fleet.py [--sizes 1,2,4,8] [--os debian12] [--keep] [--json FILE]
       python benchmarks/fleet.py --report FILE    (the table and verdicts of a run's JSON again)

Run from the repository root as root (the lab's requirements); it calls scripts/gpuprov exactly as a
user does. `lab up` for N hosts after N/2 converges the new hosts only (the others are already
converged, so it is mostly their no-op). A check that finds drift (exit 2) or any failing step is
reported as such, never as a time. The lab is taken down at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPUPROV = str(ROOT / "scripts" / "gpuprov")
GOAL_SECONDS = 45.0
GOAL_RATIO = 1.5


def children_cpu() -> float:
    """Processor time (user + system) of the ended children this process waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(*args: str) -> tuple[float, int, str, float]:
    """(seconds, exit status, the output's last lines, the controller's processor seconds) of one
    gpuprov command. The controller's share is gpuprov's and Ansible's own processes on this machine
    (the SSH clients included), not the work on the hosts: on a fleet only this share is shared."""
    t0, c0 = time.monotonic(), children_cpu()
    out = subprocess.run([GPUPROV, *args], cwd=ROOT, capture_output=True, text=True)
    tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-5:])
    return time.monotonic() - t0, out.returncode, tail, children_cpu() - c0


def ok(row: dict, key: str) -> bool:
    return row.get(f"{key}_rc") == 0


def all_ok(rows: list[dict]) -> bool:
    return all(ok(r, k) for r in rows for k in ("lab_up", "apply", "check"))


def cell(r: dict, key: str) -> str:
    if not ok(r, key):
        return f"failed (exit {r[f'{key}_rc']})"
    cpu = r.get(f"{key}_cpu")
    return f"{r[key]}" if cpu is None else f"{r[key]} ({cpu} cpu)"


def table(rows: list[dict]) -> str:
    out = ["| GPU hosts (+1 monitoring) | lab up (s) | no-op apply (s) | check (s) |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['hosts']} | " + " | ".join(cell(r, k) for k in ("lab_up", "apply", "check")) + " |")
    return "\n".join(out)


def verdicts(rows: list[dict]) -> list[str]:
    """The goals: the 2-host lab is 1 GPU host and the monitoring host."""
    by_n = {r["hosts"]: r for r in rows}
    out = []
    if 1 in by_n:
        for key in ("apply", "check"):
            r = by_n[1]
            if ok(r, key):
                out.append(f"{key} of the 2-host lab (1 GPU host + monitoring): {r[key]} s (goal <= "
                           f"{GOAL_SECONDS:.0f} s: {'met' if r[key] <= GOAL_SECONDS else 'not met'})")
    if 1 in by_n and 8 in by_n and ok(by_n[1], "check") and ok(by_n[8], "check"):
        ratio = by_n[8]["check"] / by_n[1]["check"]
        out.append(f"check of 8 GPU hosts / 1 GPU host: {ratio:.2f} (goal <= {GOAL_RATIO}: "
                   f"{'met' if ratio <= GOAL_RATIO else 'not met'})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4,8", help="GPU host counts, ascending")
    parser.add_argument("--os", default="debian12", choices=["debian12", "debian13"])
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--report", type=Path, help="print the table and verdicts of this JSON, run nothing")
    args = parser.parse_args(argv)
    if args.report:
        recorded = json.loads(args.report.read_text())["rows"]
        print(table(recorded) + "\n\n" + "\n".join(verdicts(recorded)))
        return 0 if all_ok(recorded) else 1
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict] = []
    try:
        for n in sizes:
            row: dict = {"hosts": n}
            for name, cmd in (("lab_up", ["lab", "up", "--os", args.os, "--hosts", str(n)]),
                              ("apply", ["apply"]), ("check", ["check"])):
                secs, rc, tail, cpu = timed(*cmd)
                row[name] = round(secs, 1)
                row[f"{name}_rc"] = rc
                row[f"{name}_cpu"] = round(cpu, 1)
                print(f"{n} host(s): {name} {secs:.1f} s, exit {rc}, controller cpu {cpu:.1f} s", flush=True)
                if rc != 0:
                    print(tail, file=sys.stderr)
            rows.append(row)
    finally:
        if not args.keep:
            timed("lab", "down")
    found = verdicts(rows)
    print("\n" + table(rows) + "\n\n" + "\n".join(found))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "verdicts": found}, indent=2) + "\n")
    return 0 if all_ok(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
