#!/usr/bin/env python3
"""Check a freshly downloaded wheelhouse against the repository's lock before anything uses it.

usage: check_wheels.py LOCK DIR [--local NAME]... [--local-file FILE] [--record]

LOCK lists, in sha256sum's format, every wheel the project has reviewed (for each Python version
and platform it supports). Every wheel in DIR but the ones built from the checkout (--local) must
be in it with the same sha256 (--local-file: one such name per line); a wheel that differs is refused, one that is missing is refused too
unless --record (a maintainer adding a new pin) appends it to LOCK for review and commit. A
mismatch is never recorded. Exit 0 when every wheel checks, 1 otherwise, with one line per wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_lock(lock: Path) -> dict[str, str]:
    """{file name: sha256} from sha256sum-format lines; blank lines and # comments skipped."""
    pinned: dict[str, str] = {}
    if not lock.exists():
        return pinned
    for number, line in enumerate(lock.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise SystemExit(f"{lock}:{number}: not a sha256sum line: {line!r}")
        pinned[name.lstrip("*")] = digest
    return pinned


def check(lock: Path, wheels: Path, local: set[str], record: bool) -> list[str]:
    """The problems found (empty when the wheelhouse checks); records missing wheels if asked."""
    pinned = read_lock(lock)
    problems: list[str] = []
    new: list[str] = []
    for wheel in sorted(wheels.glob("*.whl")):
        if wheel.name in local:
            continue
        got = sha256(wheel)
        want = pinned.get(wheel.name)
        if want is None:
            if record:
                new.append(f"{got}  {wheel.name}")
            else:
                problems.append(f"{wheel.name}: not in {lock.name} (a new pin: review it, then record it with "
                                f"GPUPROV_WHEELS_RECORD=1 and commit {lock})")
        elif got != want:
            problems.append(f"{wheel.name}: sha256 {got}, the lock pins {want}: refused")
    if new and not problems:
        with lock.open("a") as f:
            f.write("\n".join(new) + "\n")
        print(f"recorded {len(new)} new wheel(s) in {lock}: review and commit it")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("wheels", type=Path)
    parser.add_argument("--local", action="append", default=[], help="a wheel built from the checkout")
    parser.add_argument("--local-file", type=Path, help="the names of wheels built from the checkout, one a line")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    local = set(args.local)
    if args.local_file:
        local |= {line.strip() for line in args.local_file.read_text().splitlines() if line.strip()}
    problems = check(args.lock, args.wheels, local, args.record)
    for line in problems:
        print(f"wheel refused: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
