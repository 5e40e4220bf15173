"""`gpuprov fix`: apply to the drifted hosts only, a batch at a time, then look again.

The hosts come from a fresh drift run (or, with --from-last, from the inventory's last drift
report). Each batch is a whole `apply` limited to its hosts, so a batch is converged end to end
before the next starts; when the failed hosts so far exceed the allowed percentage, the remaining
batches are not applied. A drift run over the same hosts afterwards gives the "after" column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def batch_size(spec: str, total: int) -> int:
    """`N` hosts or `P%` of `total` (at least 1)."""
    spec = spec.strip()
    try:
        if spec.endswith("%"):
            pct = float(spec[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, math.floor(total * pct / 100))
        n = int(spec)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise ValueError(f"batch size must be a positive number of hosts or a percentage in (0, 100]: {spec!r}") \
            from None


def batches(hosts: list[str], size: int) -> list[list[str]]:
    return [hosts[i:i + size] for i in range(0, len(hosts), size)]


@dataclass
class Rollout:
    """Which hosts were applied, which failed, and which were left when the rollout stopped."""

    max_fail_percentage: float
    total: int
    applied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def over_limit(self) -> bool:
        return 100.0 * len(self.failed) / max(1, self.total) > self.max_fail_percentage
