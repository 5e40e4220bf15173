"""`gpuprov facts`: a table of each host's OS, kernel, CPU, memory and GPUs."""

from __future__ import annotations

from typing import Any

from gpuprov.events import RunTracker
from gpuprov.runner import RunRequest, RunResult, run

FACT_SUBSET = "min,hardware,virtual"
HEADERS = ("host", "os", "kernel", "cpu", "memory", "gpus", "driver")


class FactCollector:
    """Event hook that keeps each host's `ansible_facts` from the setup module."""

    def __init__(self) -> None:
        self.facts: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}

    def __call__(self, tracker: RunTracker, event: dict[str, Any]) -> None:
        kind = event.get("event")
        data = event.get("event_data") or {}
        res = data.get("res") or {}
        host = data.get("host")
        if not host:
            return
        if kind == "runner_on_ok":
            self.facts[host] = res.get("ansible_facts") or {}
        elif kind in ("runner_on_failed", "runner_on_unreachable"):
            self.errors[host] = str(res.get("msg", "failed")).splitlines()[0][:120]


def _gib(mb: Any) -> str:
    try:
        return f"{int(mb) / 1024:.1f} GiB"
    except (TypeError, ValueError):
        return "-"


def gpu_columns(facts: dict[str, Any]) -> tuple[str, str]:
    """GPU summary and driver from the `gpu` local fact (ansible_local.gpu), once it exists."""
    gpu = (facts.get("ansible_local") or {}).get("gpu")
    if not isinstance(gpu, dict):
        return "-", "-"
    gpus = gpu.get("gpus") or []
    if gpus:
        names: dict[str, int] = {}
        for g in gpus:
            names[g.get("name", "?")] = names.get(g.get("name", "?"), 0) + 1
        summary = ", ".join(f"{n}x {name}" for name, n in names.items())
    else:
        count = len(gpu.get("pci_devices") or [])
        summary = f"{count} (PCI, no driver)" if count else "none"
    return summary, str(gpu.get("driver_version") or "-")


def row(host: str, facts: dict[str, Any]) -> tuple[str, ...]:
    os_name = f"{facts.get('ansible_distribution', '?')} {facts.get('ansible_distribution_version', '')}".strip()
    cpu_model = facts.get("ansible_processor") or []
    model = cpu_model[2] if len(cpu_model) > 2 else (cpu_model[-1] if cpu_model else "?")
    cpu = f"{facts.get('ansible_processor_vcpus', '?')}x {model}"
    gpus, driver = gpu_columns(facts)
    return (
        host,
        os_name,
        str(facts.get("ansible_kernel", "?")),
        cpu[:48],
        _gib(facts.get("ansible_memtotal_mb")),
        gpus,
        driver,
    )


def gather(
    inventories: list[str], limit: str | None
) -> tuple[RunResult, FactCollector]:
    collector = FactCollector()
    req = RunRequest(
        command="facts",
        module="ansible.builtin.setup",
        module_args=f"gather_subset={FACT_SUBSET}",
        host_pattern=limit or "all",
        inventories=inventories,
    )
    result = run(req, on_event=collector)
    return result, collector
