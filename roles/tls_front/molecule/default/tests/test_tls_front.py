"""The TLS front on Debian 12 and 13, before a stand-in upstream on Triton's loopback port: TLS 1.3
only, HSTS, Triton's own routes refused but its readiness, the audit log kept 180 days, and a
configuration nginx refuses never replaces the one it is serving. Mutual TLS is a scenario of its own
(mutual_tls)."""

from __future__ import annotations

import pytest
from gpuprov_molecule import (
    EXPOSURE_LIMIT,
    assert_a_lost_restart_is_drift_and_applied,
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    assert_role_verify,
    exposure,
    failed_tasks,
    host_in,
    instance,
    run_role,
    s_client,
)

from gpuprov.verify import PASS

HOSTS = [host_in("debian12"), host_in("debian13")]
CA = "/etc/gpuprov/tls/ca.crt"
READY = "https://localhost:8443/v2/health/ready"


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_roles_own_verify_passes():
    """The role's own checks (tasks/verify.yml: what `gpuprov verify` runs on a lab or fleet) with
    the scenario's settings, on the converged hosts.
    "Triton" is the stand-in upstream here."""
    assert_role_verify("tls_front", HOSTS, {
        "TLS front: nginx active": PASS,
        "TLS front: HTTPS with a verified certificate, Triton ready behind it": PASS,
        "TLS front: Triton's own routes refused": PASS,
        "TLS front: TLS 1.2 refused": PASS,
    })


@pytest.mark.parametrize("name", HOSTS)
def test_front_proxies_to_the_upstream_with_hsts(name):
    host = instance(name)
    out = host.run(f"curl -sS -D - --cacert {CA} {READY}")
    assert out.rc == 0, out.stderr
    assert out.stdout.startswith("HTTP/1.1 200")
    assert "Strict-Transport-Security: max-age=63072000" in out.stdout
    assert out.stdout.rstrip().endswith("ready from the stand-in")


@pytest.mark.parametrize("name", HOSTS)
def test_tritons_own_routes_stay_on_loopback(name):
    """Readiness reaches the upstream; a route that the upstream serves too (its model configuration)
    and Triton's admin routes are refused at the front with an OpenAI-shaped 403."""
    host = instance(name)
    assert host.run(f"curl -sS --cacert {CA} http://127.0.0.1:8000/v2/models/deepseek/config").stdout.strip() \
        == '{"name": "deepseek"}'
    for path, method in [("/v2/models/deepseek/config", "GET"), ("/v2/models/stats", "GET"),
                         ("/v2/systemsharedmemory/status", "GET"), ("/v2/logging", "POST"),
                         ("/v2/models/deepseek/generate", "POST"), ("/v2/repository/index", "POST")]:
        out = host.run(f"curl -sS -X {method} -o /dev/null -w '%{{http_code}}' --cacert {CA} https://localhost:8443{path}")
        assert out.stdout == "403", (path, out.stdout, out.stderr)
    body = host.check_output(f"curl -sS --cacert {CA} https://localhost:8443/v2/models/stats")
    assert '"code": "forbidden"' in body


@pytest.mark.parametrize("name", HOSTS)
@pytest.mark.parametrize("port", [8443, 8444])
def test_only_tls13_is_spoken(name, port):
    host = instance(name)
    ok = s_client(host, f"-connect 127.0.0.1:{port} -tls1_3 -CAfile {CA} -verify_return_error")
    assert ok.rc == 0 and "TLSv1.3" in ok.stdout and "Verify return code: 0 (ok)" in ok.stdout
    for old in ("tls1_2", "tls1_1"):
        refused = s_client(host, f"-connect 127.0.0.1:{port} -{old} -CAfile {CA}")
        assert refused.rc != 0, refused.stdout


@pytest.mark.parametrize("name", HOSTS)
def test_grpc_port_speaks_http2(name):
    out = s_client(instance(name), f"-connect 127.0.0.1:8444 -tls1_3 -alpn h2 -CAfile {CA}")
    assert out.rc == 0 and "ALPN protocol: h2" in out.stdout


@pytest.mark.parametrize("name", HOSTS)
def test_nginx_takes_the_configuration_without_warnings(name):
    """No deprecated directive on either nginx (Debian 13's 1.26 wants `http2 on;`), and the read
    timeout outlasts the gateway's deadline (600 s by default)."""
    checked = instance(name).run("nginx -t")
    assert checked.rc == 0 and "deprecated" not in checked.stderr, checked.stderr
    conf = instance(name).file("/etc/nginx/conf.d/gpuprov-front.conf").content_string
    assert "proxy_read_timeout 610s;" in conf and "proxy_read_timeout 300s" not in conf


@pytest.mark.parametrize("name", HOSTS)
def test_nginx_runs_sandboxed(name):
    """Debian's nginx unit has no sandbox (9.6): gpuprov's drop-in brings it within the limit, and
    nginx still serves, reloads (a new worker generation) and writes the audit log under it."""
    host = instance(name)
    assert exposure(host, "nginx.service") <= EXPOSURE_LIMIT
    show = host.check_output("systemctl show nginx --property=ProtectSystem,NoNewPrivileges,CapabilityBoundingSet")
    assert "ProtectSystem=strict" in show and "NoNewPrivileges=yes" in show and "cap_sys_admin" not in show
    host.check_output("systemctl reload nginx")
    out = host.run(f"curl -sS -o /dev/null -w '%{{http_code}}' --cacert {CA} {READY}?sandboxed")
    assert out.stdout == "200", out.stderr
    assert "?sandboxed" in host.file("/var/log/gpuprov/api-access.log").content_string


def test_a_sandbox_change_whose_restart_was_lost_is_drift_and_applied():
    """A run that wrote the drop-in and then failed never ran its restart handler: the next runs must
    not leave nginx on the old sandbox. Its drop-in newer than nginx's start shows as a change in check
    mode, an apply restarts nginx, and the check after it is clean."""
    assert_a_lost_restart_is_drift_and_applied(
        HOSTS[0], "nginx", "/etc/systemd/system/nginx.service.d/10-gpuprov-hardening.conf", "tls_front",
        {"tls_front_grpc_enabled": True})  # converge's settings


@pytest.mark.parametrize("name", HOSTS)
def test_every_request_is_in_the_audit_log_kept_180_days(name):
    host = instance(name)
    host.check_output(f"curl -sS -o /dev/null --cacert {CA} {READY}?audit-{name}")
    log = host.file("/var/log/gpuprov/api-access.log")
    assert log.mode == 0o640 and log.group == "adm"
    assert f"GET /v2/health/ready?audit-{name} HTTP/1.1\" 200" in log.content_string
    rotate = host.file("/etc/logrotate.d/gpuprov-front").content_string
    assert "rotate 180" in rotate and "maxage 180" in rotate and "daily" in rotate
    assert host.run("logrotate --debug /etc/logrotate.d/gpuprov-front").rc == 0


def test_a_configuration_nginx_refuses_changes_nothing():
    # A key that does not belong to the certificate: the template renders, nginx -t refuses it.
    host, name = instance(HOSTS[0]), HOSTS[0]
    host.check_output("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out /root/other.key")
    live = host.file("/etc/nginx/conf.d/gpuprov-front.conf").content_string
    result, events = run_role("tls_front", {"tls_front_key": "/root/other.key"}, limit=name)
    failures = failed_tasks(events)
    # nginx -t fails inside the block; the rescue puts the file back and fails with nginx's words.
    assert [t for _, t, _ in failures] == ["Test the configuration with nginx -t",
                                           "Fail with nginx's verdict"], failures
    assert "nginx rejected" in failures[1][2] and "key values mismatch" in failures[1][2]
    assert host.file("/etc/nginx/conf.d/gpuprov-front.conf").content_string == live
    assert host.run(f"curl -sS -f --cacert {CA} {READY}").rc == 0
    assert host.run("nginx -t").rc == 0


def test_bad_input_fails_before_any_change():
    assert_fails_before_any_change("tls_front", {"tls_front_max_body_size": "8 megabytes"}, "Check the settings",
                                   "'8 megabytes'", hosts=HOSTS, pre_roles=(), exact_task=True)
