"""The tls role on Debian 12 and 13: certificates from an internal CA on the controller, re-issued
only when they must be; client certificates for mutual TLS, issued and revoked. A provided
certificate is the `provided` scenario's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from gpuprov_molecule import (
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    failed_tasks,
    host_in,
    instance,
    run_role,
)

HOSTS = [host_in("debian12"), host_in("debian13")]
CA_DIR = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "pki"
BASE = {"tls_ca_dir": str(CA_DIR), "tls_ca_passphrase": "tls-test-ca-passphrase",
        "tls_extra_sans": ["inference.lab.example"]}
CRT = "/etc/gpuprov/tls/server.crt"


def _text(host) -> str:
    return host.check_output(f"openssl x509 -in {CRT} -noout -text")


def _subject(host) -> str:
    """OpenSSL 3.0 (Debian 12) writes `CN = x`, 3.5 (Debian 13) `CN=x`."""
    return host.check_output(f"openssl x509 -in {CRT} -noout -subject").replace(" ", "")


def _serial(host) -> str:
    return host.check_output(f"openssl x509 -in {CRT} -noout -serial")


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


@pytest.mark.parametrize("name", HOSTS)
def test_certificate_names_the_host_and_verifies_against_the_ca(name):
    host = instance(name)
    text = _text(host)
    ip = host.check_output("hostname -I").split()[0]
    assert f"DNS:{name}" in text and f"IP Address:{ip}" in text and "DNS:inference.lab.example" in text
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication" in text
    assert host.run(f"openssl verify -CAfile /etc/gpuprov/tls/ca.crt {CRT}").rc == 0
    # The CA on the host is the controller's.
    assert host.file("/etc/gpuprov/tls/ca.crt").content_string.strip() == (CA_DIR / "ca.crt").read_text().strip()


@pytest.mark.parametrize("name", HOSTS)
def test_host_key_stays_on_the_host_and_is_private(name):
    host = instance(name)
    key = host.file("/etc/gpuprov/tls/server.key")
    assert key.mode == 0o600 and key.user == "root"
    # The controller holds the CA's key (encrypted) and certificate, never a host's key.
    assert not list(CA_DIR.rglob("*server*.key"))
    assert "ENCRYPTED" in (CA_DIR / "ca.key").read_text()  # with tls_ca_passphrase


def test_certificate_is_reissued_only_when_names_change_or_expiry_nears():
    host, limit = instance(HOSTS[0]), HOSTS[0]
    serial = _serial(host)
    same, _ = run_role("tls", BASE, limit=limit)
    assert same.rc == 0 and same.recaps[0].changed == 0 and _serial(host) == serial
    # Expiring within the window (365-day certificate, 400-day window): re-issued, once.
    near = {**BASE, "tls_cert_valid_days": 800, "tls_renew_before_days": 400}
    renewed, _ = run_role("tls", near, limit=limit)
    assert renewed.rc == 0 and _serial(host) != serial
    serial = _serial(host)
    again, _ = run_role("tls", near, limit=limit)
    assert again.recaps[0].changed == 0 and _serial(host) == serial
    # A new name: re-issued with it.
    named, _ = run_role("tls", {**near, "tls_extra_sans": ["inference.lab.example", "api.lab.example"]}, limit=limit)
    assert named.rc == 0 and _serial(host) != serial
    assert "DNS:api.lab.example" in _text(host)


def _crl_serials(host) -> str:
    return host.check_output("openssl crl -in /etc/gpuprov/tls/client-ca.crl -noout -text")


def test_client_ca_issues_client_certificates_and_revokes_them():
    """Mutual TLS's CA: its own (a server certificate does not verify against it, nor a client
    certificate against the server CA), client certificates on the controller by name with the
    clientAuth usage, the probes' always among them; a second run issues nothing; a revoked name
    lands in the CRL on the host; the CRL is re-signed when its end nears; a revoked name is never
    issued again."""
    host, limit = instance(HOSTS[0]), HOSTS[0]
    clients = {**BASE, "tls_client_ca_enabled": True, "tls_client_names": ["app-one", "app-two"]}
    result, events = run_role("tls", clients, limit=limit)
    assert result.rc == 0, failed_tasks(events)
    issued = CA_DIR / "clients"
    assert sorted(p.name for p in issued.glob("*.crt")) == ["app-one.crt", "app-two.crt", "gpuprov-probe.crt"]
    assert (issued / "app-one.key").stat().st_mode & 0o077 == 0 and (issued.stat().st_mode & 0o777) == 0o700
    assert "ENCRYPTED" in (CA_DIR / "client-ca.key").read_text()
    for name in ("app-one", "gpuprov-probe"):
        crt = str(issued / f"{name}.crt")
        assert subprocess.run(["openssl", "verify", "-CAfile", str(CA_DIR / "client-ca.crt"), crt],
                              capture_output=True).returncode == 0
        assert subprocess.run(["openssl", "verify", "-CAfile", str(CA_DIR / "ca.crt"), crt],
                              capture_output=True).returncode != 0
        text = subprocess.run(["openssl", "x509", "-in", crt, "-noout", "-text"], capture_output=True,
                              text=True, check=True).stdout
        assert "TLS Web Client Authentication" in text and "Server Authentication" not in text
    assert host.run(f"openssl verify -CAfile /etc/gpuprov/tls/client-ca.crt {CRT}").rc != 0
    assert host.file("/etc/gpuprov/tls/client-ca.crt").content_string == (CA_DIR / "client-ca.crt").read_text()
    assert "No Revoked Certificates" in _crl_serials(host)
    again, _ = run_role("tls", clients, limit=limit)
    assert again.rc == 0 and again.recaps[0].changed == 0

    serial = subprocess.run(["openssl", "x509", "-in", str(issued / "app-one.crt"), "-noout", "-serial"],
                            capture_output=True, text=True, check=True).stdout.strip().split("=")[1]
    revoked = {**clients, "tls_client_names": ["app-two"], "tls_client_revoked": ["app-one"]}
    result, events = run_role("tls", revoked, limit=limit)
    assert result.rc == 0, failed_tasks(events)
    assert f"Serial Number: {serial}" in _crl_serials(host)
    again, _ = run_role("tls", revoked, limit=limit)
    assert again.recaps[0].changed == 0

    # A CRL that ends within the renewal window (90 days left, 100-day window) is re-signed, once.
    def next_update() -> str:
        return host.check_output("openssl crl -in /etc/gpuprov/tls/client-ca.crl -noout -nextupdate")

    before = next_update()
    near = {**revoked, "tls_renew_before_days": 100, "tls_crl_valid_days": 200, "tls_cert_valid_days": 800,
            "tls_client_cert_valid_days": 800}
    renewed, events = run_role("tls", near, limit=limit)
    assert renewed.rc == 0, failed_tasks(events)
    assert next_update() != before and f"Serial Number: {serial}" in _crl_serials(host)

    # Issuing a revoked name again is refused before any change.
    assert_fails_before_any_change("tls", {**revoked, "tls_client_names": ["app-one"]},
                                   "Check the client certificates' names", "never issued again",
                                   hosts=[limit], pre_roles=(), limit=limit, exact_task=True)
    back, _ = run_role("tls", BASE, limit=limit)
    assert back.rc == 0


@pytest.mark.parametrize("extra, task, words", [
    ({"tls_ca_passphrase": ""}, "Check the CA passphrase is set", "ansible-vault"),
    ({"tls_ca_passphrase": "short"}, "Check the CA passphrase is set", "at least 12 characters"),
    ({"tls_renew_before_days": 400}, "Check the settings", "must exceed tls_renew_before_days"),
    ({"tls_extra_sans": ["bad name"]}, "Check the settings", "tls_extra_sans must be DNS names"),
    ({"tls_client_ca_enabled": True, "tls_client_names": ["app one"]}, "Check the client certificates' names",
     "letters, digits"),
    ({"tls_client_ca_enabled": True, "tls_client_revoked": ["never-issued"]},
     "Check every revoked client has a certificate to revoke", "never-issued"),
    ({"tls_mode": "provided", "tls_client_ca_enabled": True, "tls_ca_passphrase": ""},
     "Check the CA passphrase is set", "mutual TLS"),
])
def test_bad_input_fails_before_any_change(extra, task, words):
    before = [_serial(instance(h)) for h in HOSTS]
    assert_fails_before_any_change("tls", {**BASE, **extra}, task, words, hosts=HOSTS, pre_roles=(), exact_task=True)
    assert [_serial(instance(h)) for h in HOSTS] == before
