"""node_exporter behind basic auth, its hash in the exporter's web config (converge.yml), on Debian 13:
a scrape without the password or with a wrong one is refused, with it answered; a changed hash stays
out of every run's output, in check mode (with diff) and when applied; and removing the setting
(last) opens the metrics again. Its prepare step installed the exporter without a password: converge
turned basic auth on over it."""

from __future__ import annotations

import json

from gpuprov_molecule import (
    assert_no_changes_in_check_mode,
    assert_role_verify,
    failed_tasks,
    host_in,
    http_answers,
    instance,
    run_role,
    wait_until,
)

from gpuprov.verify import PASS

HOST = host_in("debian13")
METRICS = "http://127.0.0.1:9100/metrics"
# converge.yml's hash: bcrypt of "scrape-secret".
HASH = "$2b$10$J6.q5KFL1FWtzHgMhy0iDOcCkOkz1UailCJDgh.7SMzn8rDGSfG.K"
# bcrypt of "another-secret", for a would-be change.
OTHER_HASH = "$2b$10$n7Cyak3YK.u5BcZZ2/tnGuWrRQgj1YjtrHMLHnsLng02fYhp0QHQe"
CODE = "curl -sS -o /dev/null -w '%{http_code}' "


def _status(host, auth: str = "") -> str:
    return host.check_output(CODE + (f"-u {auth} " if auth else "") + METRICS)


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_roles_own_verify_passes():
    """`gpuprov verify`'s checks with basic auth on: a scrape without the password gets 401, which
    is the right answer here."""
    checks = assert_role_verify("node_exporter", [HOST], {
        "Node exporter: service active": PASS,
        "Node exporter: metrics served": PASS,
    })
    assert any("basic auth required" in c.found for c in checks), [c.found for c in checks]


def test_a_scrape_needs_the_password():
    host = instance(HOST)
    config = host.file("/etc/prometheus/node-exporter-web.yml")
    assert config.mode == 0o640 and config.user == "root" and config.group == "prometheus"
    assert http_answers(host, METRICS)
    assert _status(host) == "401"
    assert _status(host, "prometheus:scrape-secret") == "200"
    assert _status(host, "prometheus:wrong") == "401"
    assert "node_cpu_seconds_total" in host.check_output(f"curl -sS -u prometheus:scrape-secret {METRICS}")


def test_a_changed_hash_stays_out_of_the_output_in_check_mode_and_when_applied():
    """Another hash: in check mode with diff the web config would change, and then an apply changes
    it (the exporter restarted takes the new password only); neither hash is in any event of either
    run (the task is no_log)."""
    host = instance(HOST)
    settings = {"node_exporter_disabled_collectors": ["wifi"],
                "node_exporter_web_config": {"basic_auth_users": {"prometheus": OTHER_HASH}}}
    for check in (True, False):
        result, events = run_role("node_exporter", settings, check=check)
        assert result.rc == 0, failed_tasks(events)
        changed = [c.task for c in result.tracker.changes]
        assert any("Write the web config" in task for task in changed), (check, changed)
        text = json.dumps(events)
        assert HASH not in text and OTHER_HASH not in text, check
    assert http_answers(host, METRICS)
    assert wait_until(lambda: _status(host, "prometheus:another-secret") == "200", 30, every=1)
    assert _status(host, "prometheus:scrape-secret") == "401"


def test_z_removing_basic_auth_opens_the_metrics_again():
    """Last: the setting taken away on this converged host removes the web config, and the
    exporter serves without a password."""
    host = instance(HOST)
    result, events = run_role("node_exporter", {"node_exporter_disabled_collectors": ["wifi"]})
    assert result.rc == 0, failed_tasks(events)
    assert not host.file("/etc/prometheus/node-exporter-web.yml").exists
    assert http_answers(host, METRICS)
    assert wait_until(lambda: _status(host) == "200", 30, every=1)
