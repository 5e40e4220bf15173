"""tls with a certificate the user brings (tls_mode provided, converge.yml: a stand-in of the
user's CA and a certificate from it, made by prepare.yml on the controller), on Debian 13. The
host had an internal CA's certificate first (prepare): converge replaced it with the provided
certificate, key and CA. A renewed certificate is drift in check mode and is applied, and neither
key shows up in any event or artifact of either run; last, the host goes back to the internal CA."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from gpuprov_molecule import (
    assert_no_changes_in_check_mode,
    failed_tasks,
    host_in,
    instance,
    run_role,
)

from gpuprov.runner import RunResult

HOST = host_in("debian13")
RUN_DIR = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
PROVIDED = RUN_DIR / "provided"
TLS_DIR = "/etc/gpuprov/tls"
INTERNAL = {"tls_ca_dir": str(RUN_DIR / "pki"), "tls_ca_passphrase": "tls-test-ca-passphrase"}


def _settings(directory: Path, ca: Path = PROVIDED / "ca.crt") -> dict[str, str]:
    return {"tls_mode": "provided", "tls_provided_cert": (directory / "server.crt").read_text(),
            "tls_provided_key": (directory / "server.key").read_text(), "tls_provided_ca": ca.read_text()}


def _subject(host) -> str:
    """OpenSSL 3.5 (Debian 13) writes `CN=x`."""
    return host.check_output(f"openssl x509 -in {TLS_DIR}/server.crt -noout -subject").replace(" ", "")


def _assert_not_shown(key: str, result: RunResult, events: list[dict]) -> None:
    """No line of `key` in the run's events or in any file of its artifacts."""
    for line in key.strip().splitlines()[1:-1]:
        assert line not in json.dumps(events)
        found = subprocess.run(["grep", "-rlF", line, str(result.run_dir)], capture_output=True, text=True)
        assert found.stdout == "", f"the key is in {found.stdout}"


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_provided_certificate_key_and_ca_are_installed():
    host = instance(HOST)
    assert _subject(host) == "subject=CN=provided.lab.example"
    key = host.file(f"{TLS_DIR}/server.key")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    assert key.content_string.strip() == (PROVIDED / "server.key").read_text().strip()
    assert host.file(f"{TLS_DIR}/ca.crt").content_string.strip() == (PROVIDED / "ca.crt").read_text().strip()
    # The installed certificate verifies against the installed CA: the user's, not the internal one.
    assert host.run(f"openssl verify -CAfile {TLS_DIR}/ca.crt {TLS_DIR}/server.crt").rc == 0


@pytest.fixture(scope="module")
def renewed(tmp_path_factory) -> Path:
    """A new key and certificate from the user's CA, as a renewal brings them."""
    out = tmp_path_factory.mktemp("renewed")
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=renewed.lab.example", "-keyout", str(out / "server.key"),
                    "-out", str(out / "server.csr")], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(out / "server.csr"), "-CA", str(PROVIDED / "ca.crt"),
                    "-CAkey", str(PROVIDED / "ca.key"), "-CAcreateserial", "-CAserial", str(out / "ca.srl"),
                    "-days", "30", "-out", str(out / "server.crt")], check=True, capture_output=True)
    return out


def test_a_renewed_certificate_is_drift_then_applied_and_no_key_is_shown(renewed):
    """A drift check with --diff names the change of certificate and key without either key; the
    apply installs them, again without either key in its output; a check after it is clean."""
    host = instance(HOST)
    old_key = (PROVIDED / "server.key").read_text()
    new_key = (renewed / "server.key").read_text()
    check, check_events = run_role("tls", _settings(renewed), check=True)
    assert check.rc == 0, failed_tasks(check_events)
    assert [c.task for c in check.tracker.changes] == ["Install the provided certificate"], check.tracker.changes
    assert _subject(host) == "subject=CN=provided.lab.example"  # check mode changed nothing
    applied, events = run_role("tls", _settings(renewed))
    assert applied.rc == 0, failed_tasks(events)
    assert _subject(host) == "subject=CN=renewed.lab.example"
    assert host.file(f"{TLS_DIR}/server.key").content_string.strip() == new_key.strip()
    for result, run_events in ((check, check_events), (applied, events)):
        for key in (old_key, new_key):
            _assert_not_shown(key, result, run_events)
    again, again_events = run_role("tls", _settings(renewed), check=True)
    assert again.rc == 0 and again.tracker.changes == [], failed_tasks(again_events)


def test_z_back_to_the_internal_ca():
    """Last: tls_mode internal again on this host gives it the internal CA's certificate for its own
    name in place of the provided one."""
    host = instance(HOST)
    result, events = run_role("tls", INTERNAL)
    assert result.rc == 0, failed_tasks(events)
    assert _subject(host) == f"subject=CN={HOST}"
    assert host.file(f"{TLS_DIR}/ca.crt").content_string.strip() == (RUN_DIR / "pki" / "ca.crt").read_text().strip()
    assert host.run(f"openssl verify -CAfile {TLS_DIR}/ca.crt {TLS_DIR}/server.crt").rc == 0
