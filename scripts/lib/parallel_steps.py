"""Run scripts/test's long steps (pytest, Molecule scenarios) side by side.

Each step is a line on stdin: `NAME<TAB>RESOURCES<TAB>COMMAND`, RESOURCES a comma-separated list
(container names, Docker networks, apt cache directories); two steps that share a resource never
run together. A resource `after:NAME` is a step that must have passed first: the step waits for
it, and fails without running (rc 125) when that step failed. Steps start longest first as soon as
a slot is free and their resources are: by the seconds each took when it last passed, as recorded in
DURATIONS (one `NAME<TAB>SECONDS` line per step, rewritten after the run), a step that another waits
for before all others, and a step with no record yet ahead of the recorded ones in the order given
(the caller's estimate, all that a fresh machine has). A step's
output goes to LOG_DIR/<name>.log and, when it ends, to stdout in one piece, so the steps' outputs
never interleave. One line per step, `NAME<TAB>RC<TAB>SECONDS<TAB>CPU`, is written to RESULTS: CPU is
the processor time (user + system, seconds) of the step's own processes on this machine (Ansible,
Molecule, pytest, the docker client), not that of what runs inside its containers.

usage: parallel_steps.py JOBS LOG_DIR RESULTS [DURATIONS] < steps
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass
class Step:
    name: str
    resources: frozenset[str]
    command: str
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started: float = 0.0
    rc: int | None = None
    seconds: int = 0
    cpu: float = 0.0
    log_path: Path = field(default_factory=Path)


def parse(lines: list[str]) -> list[Step]:
    steps = []
    for line in lines:
        if not line.strip():
            continue
        name, resources, command = line.rstrip("\n").split("\t", 2)
        steps.append(Step(name, frozenset(r for r in resources.split(",") if r), command))
    return steps


def log_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".log"


AFTER = "after:"
DEPENDENCY_FAILED = 125


def dependencies(step: Step) -> set[str]:
    return {r[len(AFTER):] for r in step.resources if r.startswith(AFTER)}


def held(step: Step) -> frozenset[str]:
    """What the step holds while it runs (the steps it waits for are not held)."""
    return frozenset(r for r in step.resources if not r.startswith(AFTER))


def runnable(step: Step, running: list[Step], done: dict[str, int]) -> bool:
    if not all(done.get(name) == 0 for name in dependencies(step)):
        return False
    return all(not (held(step) & held(other)) for other in running)


def failed_dependency(step: Step, done: dict[str, int]) -> str | None:
    return next((name for name in sorted(dependencies(step)) if done.get(name, 0) != 0), None)


def order(steps: list[Step], recorded: dict[str, float]) -> list[Step]:
    """The order steps start in: those another step waits for first, then the ones without a record
    (in the order given), then the recorded ones, longest first."""
    needed = set().union(*(dependencies(step) for step in steps))

    def key(item: tuple[int, Step]) -> tuple[bool, bool, float, int]:
        index, step = item
        return step.name not in needed, step.name in recorded, -recorded.get(step.name, 0.0), index

    return [step for _, step in sorted(enumerate(steps), key=key)]


def read_durations(path: Path | None) -> dict[str, float]:
    if path is None or not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        name, _, seconds = line.rpartition("\t")
        try:
            out[name] = float(seconds)
        except ValueError:
            continue  # a line that is not NAME<TAB>SECONDS (a file edited by hand) is no record
    return out


def write_durations(path: Path, recorded: dict[str, float], steps: list[Step]) -> None:
    """The seconds of each step that passed replace its record; the others keep theirs."""
    merged = {**recorded, **{step.name: float(step.seconds) for step in steps if step.rc == 0}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{name}\t{seconds:.0f}\n" for name, seconds in sorted(merged.items())))
    tmp.replace(path)


def start(step: Step, log_dir: Path) -> None:
    step.log_path = log_dir / log_name(step.name)
    step.log = step.log_path.open("wb")
    step.started = time.monotonic()
    print(f"=== start {step.name}", flush=True)
    step.proc = subprocess.Popen(["bash", "-c", step.command], stdout=step.log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)


def finish(step: Step, results: IO[str]) -> None:
    assert step.proc is not None and step.log is not None
    step.rc = step.proc.returncode
    step.seconds = int(time.monotonic() - step.started)
    step.log.close()
    print(f"=== {step.name}", flush=True)
    sys.stdout.buffer.write(step.log_path.read_bytes())
    verdict = "PASS" if step.rc == 0 else "FAIL"
    detail = f"{step.seconds}s" if step.rc == 0 else f"rc {step.rc}, {step.seconds}s"
    print(f"--- {verdict} {step.name} ({detail})", flush=True)
    results.write(f"{step.name}\t{step.rc}\t{step.seconds}\t{step.cpu:.0f}\n")
    results.flush()


def reap(step: Step) -> bool:
    """Whether the step's process ended; if so, its exit status and the processor time of it and
    every descendant it waited for (wait4's rusage) are recorded."""
    assert step.proc is not None
    pid, status, usage = os.wait4(step.proc.pid, os.WNOHANG)
    if pid == 0:
        return False
    step.proc.returncode = os.waitstatus_to_exitcode(status)
    step.cpu = usage.ru_utime + usage.ru_stime
    return True


def skip(step: Step, dependency: str, log_dir: Path, results: IO[str]) -> None:
    step.rc = DEPENDENCY_FAILED
    step.log_path = log_dir / log_name(step.name)
    step.log_path.write_text(f"not run: {dependency} failed\n")
    print(f"--- FAIL {step.name} (not run: {dependency} failed)", flush=True)
    results.write(f"{step.name}\t{step.rc}\t0\t0\n")
    results.flush()


def run_all(steps: list[Step], jobs: int, log_dir: Path, results: IO[str]) -> None:
    waiting = list(steps)
    running: list[Step] = []
    done: dict[str, int] = {}
    known = {step.name for step in steps}
    for step in steps:
        unknown = dependencies(step) - known
        if unknown:  # a dependency that is not a step would wait for ever
            raise SystemExit(f"parallel_steps: {step.name} waits for unknown steps {sorted(unknown)}")
    while waiting or running:
        for step in list(waiting):
            dependency = failed_dependency(step, done)
            if dependency is not None:
                waiting.remove(step)
                skip(step, dependency, log_dir, results)
                done[step.name] = DEPENDENCY_FAILED
                continue
            if len(running) < jobs and runnable(step, running, done):
                waiting.remove(step)
                start(step, log_dir)
                running.append(step)
        time.sleep(1)
        for step in list(running):
            if reap(step):
                running.remove(step)
                finish(step, results)
                assert step.rc is not None
                done[step.name] = step.rc


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 64
    jobs, log_dir, results_path = max(1, int(argv[1])), Path(argv[2]), Path(argv[3])
    durations = Path(argv[4]) if len(argv) == 5 else None
    log_dir.mkdir(parents=True, exist_ok=True)
    recorded = read_durations(durations)
    steps = order(parse(sys.stdin.readlines()), recorded)
    with results_path.open("w") as results:
        run_all(steps, jobs, log_dir, results)
    if durations is not None:
        durations.parent.mkdir(parents=True, exist_ok=True)
        write_durations(durations, recorded, steps)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
