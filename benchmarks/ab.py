"""A/B of one command under several environments, alternating, so that a machine whose speed drifts
weighs on every variant alike: for each round, each variant once; wall time and the processor time
of the command's processes (this process's children, from getrusage).

usage: AB_VARIANTS='{"name": {"ENV": "value"}, ...}' python3 benchmarks/ab.py OUT.json ROUNDS CWD -- COMMAND...

Prints a line per run and, at the end, each variant's means (the first round left out: it warms
caches); writes every run to OUT.json.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    if "--" not in argv or len(argv[:argv.index("--")]) != 3 or "AB_VARIANTS" not in os.environ:
        print(__doc__, file=sys.stderr)
        return 2
    out, rounds, cwd = argv[0], int(argv[1]), argv[2]
    command = argv[argv.index("--") + 1:]
    variants: dict[str, dict[str, str]] = json.loads(os.environ["AB_VARIANTS"])
    runs: list[dict[str, Any]] = []
    for round_ in range(rounds):
        for name, env in variants.items():
            start, cpu = time.monotonic(), children_cpu()
            done = subprocess.run(command, cwd=cwd, env={**os.environ, **env},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs.append({"round": round_, "variant": name, "rc": done.returncode,
                         "wall": round(time.monotonic() - start, 1), "cpu": round(children_cpu() - cpu, 1)})
            print(runs[-1], flush=True)
    with open(out, "w") as f:
        json.dump(runs, f, indent=1)
    for name in variants:
        kept = [r for r in runs if r["variant"] == name and (r["round"] > 0 or rounds == 1)]
        print(f"{name}: processor {statistics.mean(r['cpu'] for r in kept):.1f} s, "
              f"wall {statistics.mean(r['wall'] for r in kept):.1f} s "
              f"(rounds {len(kept)}, exit {sorted({r['rc'] for r in kept})})")
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
