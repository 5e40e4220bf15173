"""`gpuprov drift`: a check-mode run over the fleet, turned into a report per host.

Each host is `compliant` (nothing would change), `drifted` (tasks would change: listed with their
diffs), `failed` (a task failed, so the check is incomplete) or `unreachable`. The report comes as a
table, JSON, JUnit XML (one test case per host, a drifted host a failure) or Markdown. Every run is
appended to the inventory's history (`.gpuprov/drift/<inventory>/history.jsonl`), so a report says
since when each host has been drifted.

Diffs are Ansible's own: a task under `no_log` shows none (its result is censored); values that look
like secrets (`password`, `token`, `key` fields) are masked in what is shown and written.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gpuprov import paths
from gpuprov.events import Change
from gpuprov.runner import RunResult

COMPLIANT, DRIFTED, FAILED, UNREACHABLE = "compliant", "drifted", "failed", "unreachable"
FORMATS = ("table", "json", "junit", "markdown")
SCHEMA = "gpuprov.drift/1"
REDACTED = "<redacted>"
_SECRET_LINE = re.compile(r"(?i)((?:password|passwd|secret|token|api[_-]?key|private[_-]?key)\S*\s*[:=]\s*).+")
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)


@dataclass
class DriftedTask:
    task: str
    action: str
    diff: str


@dataclass
class HostReport:
    host: str
    status: str
    tasks: list[DriftedTask] = field(default_factory=list)
    failed_tasks: list[str] = field(default_factory=list)
    drifted_since: str | None = None


@dataclass
class Report:
    schema: str
    inventory: str
    started: str
    duration_s: float
    run_dir: str
    hosts: list[HostReport]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for h in self.hosts if h.status == s) for s in (COMPLIANT, DRIFTED, FAILED, UNREACHABLE)}

    def exit_code(self) -> int:
        """As `check`: 1 when any host failed or was unreachable, else 2 when any drifted, else 0."""
        c = self.counts()
        if c[FAILED] or c[UNREACHABLE]:
            return 1
        return 2 if c[DRIFTED] else 0


def redact(text: str) -> str:
    return _SECRET_LINE.sub(lambda m: m.group(1) + REDACTED, _PEM.sub(REDACTED, text))


def diff_text(diff: list[dict[str, Any]]) -> str:
    """Ansible's diff entries (before/after with their headers, or a prepared text) as unified text."""
    import difflib

    out: list[str] = []
    for d in diff:
        if not isinstance(d, dict):
            continue
        if d.get("prepared"):
            out.append(str(d["prepared"]))
            continue
        before, after = d.get("before", ""), d.get("after", "")
        if isinstance(before, dict | list) or isinstance(after, dict | list):
            before = json.dumps(before, indent=2, sort_keys=True) + "\n"
            after = json.dumps(after, indent=2, sort_keys=True) + "\n"
        if before == after:
            continue
        out.extend(difflib.unified_diff(str(before).splitlines(keepends=True), str(after).splitlines(keepends=True),
                                        fromfile=str(d.get("before_header", "before")),
                                        tofile=str(d.get("after_header", "after"))))
    return redact("".join(out))


def host_reports(result: RunResult) -> list[HostReport]:
    """One report per host of the run's recap."""
    by_host: dict[str, list[Change]] = result.tracker.changes_by_host()
    reports = []
    for recap in sorted(result.recaps, key=lambda r: r.host):
        host = recap.host
        progress = result.tracker.hosts.get(host)
        if recap.unreachable:
            status = UNREACHABLE
        elif recap.failed:
            status = FAILED
        elif by_host.get(host) or recap.changed:
            status = DRIFTED
        else:
            status = COMPLIANT
        tasks = [DriftedTask(c.label(), c.action, diff_text(c.diff)) for c in by_host.get(host, [])]
        reports.append(HostReport(host, status, tasks, list(progress.failed_tasks) if progress else []))
    return reports


def history_path(inventories: list[str]) -> Path:
    return paths.state_dir() / "drift" / paths.inventory_key(inventories) / "history.jsonl"


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def apply_history(hosts: list[HostReport], history: list[dict[str, Any]], now: str) -> None:
    """Each drifted host's `drifted_since`: the first run of its current unbroken streak of drifted
    runs (a failed or unreachable run does not break it: nothing was learnt)."""
    for h in hosts:
        if h.status != DRIFTED:
            continue
        since = now
        for entry in reversed(history):
            status = (entry.get("hosts") or {}).get(h.host)
            if status == DRIFTED:
                since = entry["time"]
            elif status in (FAILED, UNREACHABLE):
                continue
            else:
                break
        h.drifted_since = since


def record(path: Path, report: Report) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"time": report.started, "hosts": {h.host: h.status for h in report.hosts}, "run_dir": report.run_dir}
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def build(result: RunResult, inventories: list[str], started: datetime | None = None) -> Report:
    """The report of a finished check-mode run, with each drifted host's `drifted_since` from the
    inventory's history; the run is appended to that history."""
    started_at = (started or datetime.now(UTC)).isoformat(timespec="seconds")
    hosts = host_reports(result)
    path = history_path(inventories)
    apply_history(hosts, read_history(path), started_at)
    report = Report(SCHEMA, paths.inventory_key(inventories), started_at, round(result.duration_s, 1),
                    str(result.run_dir), hosts)
    record(path, report)
    return report


# --- formats ---------------------------------------------------------------------------------------

def to_json(report: Report) -> str:
    body = asdict(report)
    body["counts"] = report.counts()
    return json.dumps(body, indent=2) + "\n"


def to_table(report: Report) -> str:
    from gpuprov.report import table

    rows = [(h.host, h.status, str(len(h.tasks)), h.drifted_since or "-") for h in report.hosts]
    out = [table(("host", "status", "drifted tasks", "drifted since"), rows)]
    for h in report.hosts:
        for t in h.tasks:
            out.append(f"\n{h.host}: {t.task}")
            if t.diff:
                out.append("\n".join("    " + ln for ln in t.diff.rstrip("\n").splitlines()))
        for failed in h.failed_tasks:
            out.append(f"\n{h.host}: FAILED {failed}")
    c = report.counts()
    out.append(f"\n{c[COMPLIANT]} compliant, {c[DRIFTED]} drifted, {c[FAILED]} failed, {c[UNREACHABLE]} unreachable")
    return "\n".join(out) + "\n"


def to_markdown(report: Report) -> str:
    c = report.counts()
    out = [f"# Drift report: {report.inventory}", "",
           f"{report.started}, {report.duration_s} s: {c[COMPLIANT]} compliant, {c[DRIFTED]} drifted, "
           f"{c[FAILED]} failed, {c[UNREACHABLE]} unreachable.", "",
           "| host | status | drifted tasks | drifted since |", "|---|---|---|---|"]
    out += [f"| {h.host} | {h.status} | {len(h.tasks)} | {h.drifted_since or '-'} |" for h in report.hosts]
    for h in report.hosts:
        if not h.tasks and not h.failed_tasks:
            continue
        out += ["", f"## {h.host} ({h.status})", ""]
        for t in h.tasks:
            out.append(f"- {t.task}")
            if t.diff:
                out += ["", "  ```diff", *("  " + ln for ln in t.diff.rstrip("\n").splitlines()), "  ```", ""]
        out += [f"- FAILED: {t}" for t in h.failed_tasks]
    return "\n".join(out) + "\n"


def to_junit(report: Report) -> str:
    c = report.counts()
    suite = ET.Element("testsuite", name=f"gpuprov drift {report.inventory}", tests=str(len(report.hosts)),
                       failures=str(c[DRIFTED]), errors=str(c[FAILED] + c[UNREACHABLE]), skipped="0",
                       timestamp=report.started, time=str(report.duration_s))
    for h in report.hosts:
        case = ET.SubElement(suite, "testcase", classname="gpuprov.drift", name=h.host)
        if h.status == DRIFTED:
            text = "\n".join(f"{t.task}\n{t.diff}" for t in h.tasks)
            failure = ET.SubElement(case, "failure", type="drifted",
                                    message=f"{len(h.tasks)} task(s) would change (since {h.drifted_since})")
            failure.text = text
        elif h.status in (FAILED, UNREACHABLE):
            error = ET.SubElement(case, "error", type=h.status, message=h.status)
            error.text = "\n".join(h.failed_tasks)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def write_metrics(report: Report, path: Path) -> None:
    """The report as Prometheus metrics, in the textfile collector's format (node exporter's
    `--collector.textfile.directory`), written atomically by prometheus_client."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    labels = ["inventory", "managed_host"]
    status = Gauge("gpuprov_drift_host_status", "1 for the host's status in the last drift run, 0 for the others",
                   [*labels, "status"], registry=registry)
    tasks = Gauge("gpuprov_drift_tasks", "Tasks that would change the host (its drift) in the last drift run",
                  labels, registry=registry)
    since = Gauge("gpuprov_drift_drifted_since_timestamp_seconds",
                  "When the host's current drift was first seen (Unix time)", labels, registry=registry)
    last = Gauge("gpuprov_drift_last_run_timestamp_seconds", "When the last drift run started (Unix time)",
                 ["inventory"], registry=registry)
    duration = Gauge("gpuprov_drift_last_run_duration_seconds", "How long the last drift run took",
                     ["inventory"], registry=registry)
    for h in report.hosts:
        for s in (COMPLIANT, DRIFTED, FAILED, UNREACHABLE):
            status.labels(report.inventory, h.host, s).set(1 if h.status == s else 0)
        tasks.labels(report.inventory, h.host).set(len(h.tasks))
        if h.drifted_since:
            since.labels(report.inventory, h.host).set(datetime.fromisoformat(h.drifted_since).timestamp())
    last.labels(report.inventory).set(datetime.fromisoformat(report.started).timestamp())
    duration.labels(report.inventory).set(report.duration_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)


RENDER = {"table": to_table, "json": to_json, "junit": to_junit, "markdown": to_markdown}
