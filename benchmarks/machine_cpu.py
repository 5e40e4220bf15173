"""Run a command and print how busy the whole machine was meanwhile: the processor seconds every
process spent (from /proc/stat, the containers' included), the wall time, the average use of all
cores, and how many one-second samples fell in each tenth of full use.

usage: python3 benchmarks/machine_cpu.py COMMAND [ARG ...]

Prints to standard error; exits with the command's exit status.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time


def busy_and_total() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot: idle and iowait are not busy."""
    with open("/proc/stat") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:]]
    total = sum(ticks)
    return total - ticks[3] - ticks[4], total


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    hz = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    start, (busy0, _) = time.monotonic(), busy_and_total()
    process = subprocess.Popen(argv)
    samples: list[float] = []
    previous = busy_and_total()
    while process.poll() is None:
        time.sleep(1)
        current = busy_and_total()
        total = current[1] - previous[1]
        samples.append((current[0] - previous[0]) / total if total else 0.0)
        previous = current
    wall = time.monotonic() - start
    busy = (busy_and_total()[0] - busy0) / hz
    print(f"exit {process.returncode}: wall {wall:.1f} s, processor {busy:.1f} s busy, "
          f"{busy / wall / cores * 100:.0f} % of {cores} cores", file=sys.stderr)
    tenths = collections.Counter(min(9, int(sample * 10)) for sample in samples)
    print("one-second samples by use (tenths of full use: count): "
          + ", ".join(f"{k / 10:.1f}: {n}" for k, n in sorted(tenths.items())), file=sys.stderr)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
