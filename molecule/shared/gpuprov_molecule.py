"""Helpers for testinfra verifiers: run playbooks against Molecule's instances through gpuprov's
own runner (the code path of `gpuprov apply` and `gpuprov check`).

- `assert_no_changes_in_check_mode()`: the scenario's converge.yml with --check --diff must report
  zero changes on a converged host (the drift check).
- `run_role(role, extra_vars, ...)`: apply one role with extra variables, for bad-input and
  failure-path tests; returns the result and every event.
- `role_verify(role)`: the role's own tasks/verify.yml (what `gpuprov verify` runs) with the
  scenario's settings; returns each check's result.
- `host_in(group)` / `hosts_in(group)`: the scenario's hosts by inventory group (debian12 and
  debian13 on the shared platforms), as Molecule named them for this run.
- `http_answers(host, url)`: wait until a URL answers from inside a host (after a restart);
  `gateway_completion(host, key)`: a chat completion asked of the gateway on a host's loopback.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from gpuprov.runner import RunRequest, RunResult, run
from gpuprov.verify import Check, CheckCollector


def _inventory_dir() -> str:
    return str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)


def run_playbook(playbook: Path, extra_vars: dict[str, Any] | None = None, check: bool = False,
                 limit: str | None = None, inventories: tuple[str, ...] = (),
                 tags: str | None = None) -> tuple[RunResult, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    extra = [json.dumps(extra_vars)] if extra_vars else []
    req = RunRequest(
        command="molecule-verify",
        playbook=str(playbook.resolve()),
        inventories=[_inventory_dir(), *inventories],
        limit=limit,
        tags=tags,
        extra_vars=extra,
        check=check,
        diff=check,
    )
    return run(req, on_event=lambda _t, e: events.append(e)), events


def run_role(role: str, extra_vars: dict[str, Any] | None = None, check: bool = False,
             limit: str | None = None, pre_roles: tuple[str, ...] = (), hosts: str = "all",
             extra_inventory: dict[str, Any] | None = None,
             facts: dict[str, dict[str, Any]] | None = None,
             tags: str | None = None) -> tuple[RunResult, list[dict[str, Any]]]:
    """`extra_inventory`: an inventory (YAML structure) added to Molecule's, e.g. hosts that join a group.
    `facts`: facts of hosts that are never reached (host -> facts, as `ansible_facts` names them), put
    in the run's fact cache first, as an earlier run would have left them; an inventory cannot give
    facts (Ansible's fact cache replaces an inventory's `ansible_facts`)."""
    play = [{"name": f"Apply {role}", "hosts": hosts, "become": True,
             "roles": [*pre_roles, role]}]
    if facts:
        play.insert(0, {"name": "The facts of hosts that are never reached", "hosts": "localhost",
                        "gather_facts": False, "tasks": [
                            {"name": f"Cache the facts of {host}",
                             "ansible.builtin.set_fact": {**host_facts, "cacheable": True},
                             "delegate_to": host, "delegate_facts": True}
                            for host, host_facts in facts.items()]})
    with tempfile.TemporaryDirectory(prefix="gpuprov-verify-") as tmp:
        path = Path(tmp) / "play.yml"
        path.write_text(yaml.safe_dump(play))
        inventories: tuple[str, ...] = ()
        if extra_inventory:
            extra = Path(tmp) / "extra-inventory.yml"
            extra.write_text(yaml.safe_dump(extra_inventory))
            inventories = (str(extra),)
        return run_playbook(path, extra_vars, check, limit, inventories, tags)


_ENV_LOOKUP = re.compile(r"\{\{\s*lookup\(\s*'ansible\.builtin\.env'\s*,\s*'(\w+)'\s*\)\s*\}\}")


def role_verify(role: str) -> list[Check]:
    """The role's tasks/verify.yml, the checks `gpuprov verify` runs on a lab or fleet, against the
    scenario's hosts with the scenario's settings: every play of converge.yml that applies the role
    (its hosts, vars and vars_files) runs the role's verify tasks instead, through gpuprov's runner
    and its verify module. Returns every check (an unreachable host or a broken probe task is a
    failed check, so a run cannot pass by checking nothing)."""
    converge = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml"
    plays = []
    for play in yaml.safe_load(converge.read_text()):
        entry = _role_entry(play, role)
        if entry is None:
            continue
        task = {"name": f"Run {role}'s checks",
                "ansible.builtin.include_role": {"name": role, "tasks_from": "verify.yml"}}
        if "when" in entry:
            task["when"] = entry["when"]
        verify = {"name": f"Verify {role}", "hosts": play["hosts"], "become": True,
                  "vars": {**play.get("vars", {}), **entry.get("vars", {})}, "tasks": [task]}
        if play.get("vars_files"):  # relative to converge.yml, as Ansible would resolve them there
            verify["vars_files"] = [_beside(converge, f) for f in play["vars_files"]]
        plays.append(verify)
    assert plays, f"no play of {converge} applies {role}"
    collector = CheckCollector()
    with tempfile.TemporaryDirectory(prefix="gpuprov-role-verify-") as tmp:
        path = Path(tmp) / "verify.yml"
        path.write_text(yaml.safe_dump(plays))
        req = RunRequest(command="molecule-role-verify", playbook=str(path), inventories=[_inventory_dir()])
        result = run(req, on_event=collector)
    assert collector.checks, f"{role}'s verify ran no check (rc {result.rc}): {result.run_dir}"
    return collector.checks


def _beside(playbook: Path, vars_file: str | list[str]) -> str:
    """A play's vars_files entry as Ansible resolves it from `playbook`'s directory (the verify play
    runs from elsewhere), environment lookups (`{{ lookup('ansible.builtin.env', 'NAME') }}`, e.g.
    the scenario run's directory) filled in; a list is Ansible's first-found form. The file must
    exist: Ansible skips a missing vars file without a word when the host has no gathered facts, and
    the checks would run without the scenario's settings."""
    candidates = [_resolved(playbook, f) for f in (vars_file if isinstance(vars_file, list) else [vars_file])]
    found = [path for path in candidates if path.is_file()]
    assert found, f"{playbook}: no vars file of {vars_file} exists: {[str(p) for p in candidates]}"
    return str(found[0])


def _resolved(playbook: Path, vars_file: str) -> Path:
    def env(match: re.Match[str]) -> str:
        value = os.environ.get(match.group(1))
        assert value, f"{playbook}: vars file {vars_file}: {match.group(1)} is not set"
        return value

    text = _ENV_LOOKUP.sub(env, vars_file)
    assert "{{" not in text, f"{playbook}: vars file {vars_file}: only environment lookups are resolved here"
    return playbook.parent / text  # an absolute path stays as it is


def _role_entry(play: dict[str, Any], role: str) -> dict[str, Any] | None:
    """Where the play applies the role: its `roles` entry or its include_role/import_role task."""
    for r in play.get("roles", []):
        entry = {"role": r} if isinstance(r, str) else r
        if entry.get("role", entry.get("name")) == role:
            return entry
    for t in play.get("tasks", []):
        for action in ("ansible.builtin.include_role", "ansible.builtin.import_role"):
            if (t.get(action) or {}).get("name") == role:
                return t
    return None


def assert_role_verify(role: str, hosts: list[str], expected: dict[str, str]) -> list[Check]:
    """The role's own checks on the converged hosts: each check in `expected` (name -> pass, FAIL or
    skip) with that result on every host in `hosts`, and no other check or failure."""
    checks = role_verify(role)
    got = {(c.host, c.name): c.result for c in checks}
    want = {(h, name): result for h in hosts for name, result in expected.items()}
    assert got == want, "\n".join(f"{c.host}: {c.name}: {c.result}: {c.found}" for c in checks)
    return checks


def failed_tasks(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(host, task, message) of every failed task; a loop's message is its failed items' (e.g. a
    preflight's concerns), joined."""
    out = []
    for e in events:
        if e.get("event") == "runner_on_failed" and not e["event_data"].get("ignore_errors"):
            d = e["event_data"]
            res = d.get("res") or {}
            items = [str(r.get("msg", "")) for r in res.get("results") or [] if isinstance(r, dict) and r.get("failed")]
            out.append((d.get("host", ""), d.get("task", ""), " | ".join(items) if items else str(res.get("msg", ""))))
    return out


def check_mode_changes(playbook: str | None = None, limit: str | None = None) -> list[str]:
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    converge = Path(playbook) if playbook else scenario / "converge.yml"
    result, _ = run_playbook(converge, check=True, limit=limit)
    assert result.rc == 0 and not result.failed, (
        f"check-mode run failed (rc {result.rc}); artifacts: {result.run_dir}"
    )
    return [f"{c.host}: {c.label()}" for c in result.tracker.changes]


def assert_no_changes_in_check_mode(playbook: str | None = None, units: tuple[str, ...] = (),
                                    limit: str | None = None) -> None:
    """`units`: systemd units whose journal since the run started is added to a failure's message
    (a service that was not running during the run shows why). `limit`: the hosts to check (all of
    the scenario's by default)."""
    started = time.time()
    try:
        changes = check_mode_changes(playbook, limit)
    except AssertionError as e:  # the run failed: the units' journals on every host say more
        if not units:
            raise
        inventory = yaml.safe_load(Path(os.environ["MOLECULE_INVENTORY_FILE"]).read_text())
        names = sorted(inventory.get("all", {}).get("hosts", {}))
        raise AssertionError("\n".join([str(e), *(journal_since(h, units, started) for h in names)])) from None
    if changes and units:
        hosts = sorted({c.split(": ", 1)[0] for c in changes})
        changes += [journal_since(host, units, started) for host in hosts]
    assert changes == [], "check mode after converge reports changes:\n" + "\n".join(changes)


def assert_a_lost_restart_is_drift_and_applied(name: str, unit: str, path: str, role: str | None = None,
                                                role_vars: dict[str, Any] | None = None) -> list[str]:
    """A run that wrote one of `unit`'s files and then failed never ran its restart handler: the file
    newer than the unit's start shows as a change in check mode (which restarts nothing), an apply
    restarts the unit, and the check after it is clean (`_common`'s unit_current). The apply is
    `role` with the converge's `role_vars`, or the scenario's converge.yml when no role is named.
    Returns the check-mode run's changes, for a caller that expects exactly these."""
    host = instance(name)
    main_pid = f"systemctl show --property=MainPID --value {unit}"
    pid = host.check_output(main_pid)
    host.check_output(f"sleep 1; touch {path}")
    # Both checks on this host alone: the drift is made there, and the scenario's own check-mode test
    # covers the other hosts.
    changes = check_mode_changes(limit=name)
    restart = f"Restart the unit to apply its changed files ({unit})"
    assert [c for c in changes if c.startswith(f"{name}: ") and restart in c], changes
    assert host.check_output(main_pid) == pid  # check mode did nothing
    if role is None:
        result, events = run_playbook(Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml", limit=name)
    else:
        result, events = run_role(role, role_vars, limit=name)
    assert result.rc == 0, failed_tasks(events)
    assert host.check_output(main_pid) not in (pid, "0")  # restarted, and running
    assert_no_changes_in_check_mode(limit=name)
    return changes


def wait_until(predicate, seconds: float = 60, every: float = 2):
    """predicate()'s first true value within `seconds` (called every `every` s), else its last one:
    for what a test waits on after a restart, with a deadline a slow machine still meets."""
    deadline, value = time.monotonic() + seconds, None
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


GATEWAY_COMPLETIONS = "http://127.0.0.1:8080/v1/chat/completions"
GATEWAY_BODY = {"model": "deepseek-chat", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]}


def gateway_completion(host: Any, key: str | None) -> tuple[int, dict[str, Any], str]:
    """A chat completion asked of the gateway on `host`'s loopback with `key` (none: no header):
    (HTTP status, the JSON body, the response headers)."""
    auth = f"-H 'Authorization: Bearer {key}'" if key else ""
    out = host.check_output(
        f"curl -sS -D /tmp/h -o /tmp/b -w '%{{http_code}}' {auth} -H 'Content-Type: application/json' "
        f"--data '{json.dumps(GATEWAY_BODY)}' {GATEWAY_COMPLETIONS}")
    return int(out), json.loads(host.check_output("cat /tmp/b")), host.check_output("cat /tmp/h")


def http_answers(host: Any, url: str, success: bool = False, seconds: float = 60) -> bool:
    """`url` answers from inside `host` (any status; a success status when `success`) within
    `seconds`: a role run that restarted a service returns before it listens again."""
    curl = f"curl -sS {'-f ' if success else ''}-o /dev/null {url}"
    return bool(wait_until(lambda: host.run(curl).rc == 0, seconds, every=1))


def journal_since(name: str, units: tuple[str, ...], since: float) -> str:
    """The last 60 lines of the units' journal on one instance since `since` (seconds since the epoch;
    5 s earlier), for a failure's message."""
    unit_args = " ".join(f"-u {u}" for u in units)
    out = instance(name).run(f"journalctl {unit_args} --since @{int(since) - 5} --no-pager -o short-precise"
                             " | tail -n 60")
    return f"--- {name}: journal of {', '.join(units)} during the run ---\n{out.stdout}"


def hosts_in(group: str) -> list[str]:
    """The scenario's hosts in an inventory group (as Molecule wrote its inventory), sorted: tests
    select hosts by group, never by a container's name (the shared platforms are named after the
    scenario run, .config/molecule/config.yml)."""
    inventory = yaml.safe_load(Path(os.environ["MOLECULE_INVENTORY_FILE"]).read_text()) or {}
    return sorted((inventory.get(group) or {}).get("hosts") or {})


def host_in(group: str) -> str:
    """The one host of a group (debian12, debian13 for the shared platforms)."""
    hosts = hosts_in(group)
    assert len(hosts) == 1, f"group {group!r} has {hosts}, not one host"
    return hosts[0]


def instance(name: str):
    """A testinfra host for one Molecule instance (for tests that target one platform)."""
    import testinfra

    return testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


def s_client(host, args: str):
    """`openssl s_client ARGS` on a testinfra host: its exit status and its output with non-printable
    bytes replaced (after an h2 handshake the server's first HTTP/2 frames are binary)."""
    out = "/tmp/gpuprov-s_client.out"
    return host.run(f"echo | openssl s_client {args} > {out} 2>&1; rc=$?; "
                    f"LC_ALL=C tr -c '\\11\\12\\15\\40-\\176' '.' < {out}; exit $rc")


def serve_stand_in_repository(host, repo_path: str, key_name: str, port: int) -> dict[str, str]:
    """A stand-in for an NVIDIA apt repository on the instance: an InRelease file and a signing key
    (a fresh test key, so its fingerprint is not NVIDIA's, followed in the same file by a second key
    that a mirror appended) under /srv/standin/<repo_path>, served
    over HTTP on loopback. Returns the base URL and the test key's fingerprint; stop it with
    `stop_stand_in_repository(host, port)`."""
    repo = f"/srv/standin/{repo_path.strip('/')}"
    url = f"http://127.0.0.1:{port}/{repo_path.strip('/')}/InRelease"
    script = f"""
set -e
mkdir -p {repo}
export GNUPGHOME=$(mktemp -d)
gpg --batch --passphrase '' --quick-gen-key 'gpuprov test key <test@example.invalid>' ed25519 sign never
gpg --batch --armor --export > {repo}/{key_name}
gpg --batch --with-colons --list-keys | awk -F: '/^fpr/ {{print $10; exit}}' > /srv/standin/fpr-{port}
# A mirror that appends a key of its own to the published one: only the expected key may be trusted.
export GNUPGHOME=$(mktemp -d)
gpg --batch --passphrase '' --quick-gen-key 'a mirror key <mirror@example.invalid>' ed25519 sign never
gpg --batch --armor --export >> {repo}/{key_name}
echo 'not a real release file' > {repo}/InRelease
nohup python3 -m http.server {port} --bind 127.0.0.1 --directory /srv/standin >/dev/null 2>&1 &
for i in $(seq 1 300); do curl -fsS -o /dev/null {url} && exit 0; sleep 0.2; done
exit 1
"""
    host.check_output("bash -c %s", script)
    return {"base": f"http://127.0.0.1:{port}",
            "fpr": host.file(f"/srv/standin/fpr-{port}").content_string.strip()}


def stop_stand_in_repository(host, port: int) -> None:
    host.run(f"pkill -f 'http.server {port}'")


def assert_fails_before_any_change(role: str, extra_vars: dict[str, Any], task: str, words: str,
                                   hosts: int | list[str] = 2, pre_roles: tuple[str, ...] = ("gpu_facts",),
                                   limit: str | None = None, play_hosts: str = "all",
                                   exact_task: bool = False) -> None:
    """Bad input: on each of `hosts` hosts (a count, or the hosts' names), exactly one task fails, it
    is `task` (a substring of its name, or the name itself with `exact_task`), its message contains
    `words`, and nothing changed."""
    result, events = run_role(role, extra_vars, pre_roles=pre_roles, limit=limit, hosts=play_hosts)
    failures = failed_tasks(events)
    if isinstance(hosts, int):
        assert len(failures) == hosts, failures
    else:
        assert sorted(h for h, _, _ in failures) == sorted(hosts), failures
    assert all((t == task if exact_task else task in t) and words in msg for _, t, msg in failures), failures
    assert all(r.changed == 0 for r in result.recaps)


# The highest `systemd-analyze security` exposure a gpuprov unit may have (the README's figure).
EXPOSURE_LIMIT = 4.0


def exposure(host, unit: str) -> float:
    """`systemd-analyze security UNIT`'s overall exposure level (0 best, 10 worst), printed too."""
    out = host.check_output(f"systemd-analyze security --no-pager {unit}")
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert found, out
    print(f"{unit}: exposure {found.group(1)}")
    return float(found.group(1))
