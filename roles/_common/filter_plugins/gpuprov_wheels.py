"""Hash-checked requirements for a venv installed from a package index.

`pins | gpuprov_hashed_requirements(lock_text, lock_name)` turns each pin (name==version) into a
pip requirement line carrying the sha256 of every wheel the repository's lock (files/wheel-locks/)
has reviewed for that name and version, for any Python and platform. pip then installs with
--require-hashes: a wheel the index serves that is not byte for byte a reviewed one is refused
before anything is installed. A pin with no reviewed wheel fails here, naming it, before any change.
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError


def _normal(name: str) -> str:
    """PEP 503 names, as wheel file names spell them (runs of '-', '_', '.' as '_'), lower case."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _lock(text: str) -> dict[tuple[str, str], list[str]]:
    """{(normalised name, version): [sha256, ...]} from sha256sum-format lines of wheel files."""
    hashes: dict[tuple[str, str], list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, filename = line.partition("  ")
        parts = filename.split("-")
        if len(digest) != 64 or not filename.endswith(".whl") or len(parts) < 5:
            raise AnsibleFilterError(f"not a wheel lock line: {line!r}")
        hashes.setdefault((_normal(parts[0]), parts[1]), []).append(digest)
    return hashes


def hashed_requirements(pins: list[str], lock_text: str, lock_name: str = "the lock") -> list[str]:
    hashes = _lock(lock_text)
    lines, missing = [], []
    for pin in pins:
        name, sep, version = pin.partition("==")
        if not sep or not version or any(c in version for c in "<>=!~*,; "):
            raise AnsibleFilterError(f"{pin!r}: a hash-checked install needs an exact pin (name==version)")
        found = hashes.get((_normal(name.split("[")[0]), version.strip()))
        if not found:
            missing.append(pin)
            continue
        lines.append(f"{name.strip()}=={version.strip()} " + " ".join(f"--hash=sha256:{h}" for h in sorted(found)))
    if missing:
        raise AnsibleFilterError(
            f"no reviewed wheel in {lock_name} for {', '.join(missing)}: a package index install is hash-checked "
            "against the repository's wheel lock (a package built from this checkout is never in it: use the "
            "controller source for it)")
    return lines


class FilterModule:
    def filters(self) -> dict:
        return {"gpuprov_hashed_requirements": hashed_requirements}
