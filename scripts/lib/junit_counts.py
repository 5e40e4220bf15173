"""What scripts/test's final line counts: the tests of its pytest run's JUnit report and of each
package's (LOG_DIR/package-<name>.xml, written by the test that ran the package's own suite, which
is then counted through them: passed, it is not counted; failed, it is counted only when none of the
package's own tests failed, e.g. its linter did). Skipped tests are not counted.

Prints `PASSED FAILED`, then the failing tests' names (at most 50), one a line.

usage: junit_counts.py PYTEST_JUNIT LOG_DIR
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

PREFIX, SUFFIX = "package-", ".xml"


def _cases(path: Path) -> Iterator[ET.Element]:
    return ET.parse(path).getroot().iter("testcase")


def _bad(case: ET.Element) -> bool:
    return case.find("failure") is not None or case.find("error") is not None


def count(junit: Path, logs: Path) -> tuple[int, list[str]]:
    packages = {p.name[len(PREFIX):-len(SUFFIX)]: p for p in sorted(logs.glob(f"{PREFIX}*{SUFFIX}"))}
    runners = {f"test_package[{name}]" for name in packages}
    failing = {f"test_package[{name}]" for name, p in packages.items() if any(_bad(c) for c in _cases(p))}
    sources = [(junit, "")] if junit.is_file() else []
    sources += [(p, f"{name}: ") for name, p in packages.items()]
    passed, failed = 0, []
    for path, prefix in sources:
        for case in _cases(path):
            name = case.get("name", "")
            if not prefix and name in runners and (not _bad(case) or name in failing):
                continue
            if case.find("skipped") is not None:
                continue
            if _bad(case):
                failed.append(prefix + f"{case.get('classname', '')}::{name}".lstrip(":"))
            else:
                passed += 1
    return passed, failed


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ok, bad = count(Path(sys.argv[1]), Path(sys.argv[2]))
    print(ok, len(bad))
    print("\n".join(bad[:50]))
