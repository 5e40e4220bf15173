"""The TLS front with mutual TLS (converge.yml) on Debian 13, before the stand-in upstream: only the
client CA's certificates get in, and of those only the names on the allow-list (the probes' always);
a certificate the CRL lists is refused once it is revoked; and turning mutual TLS off (last) lets
clients in without a certificate again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from gpuprov_molecule import (
    assert_no_changes_in_check_mode,
    assert_role_verify,
    failed_tasks,
    host_in,
    instance,
    run_role,
)

from gpuprov.verify import PASS

HOST = host_in("debian13")
CA = "/etc/gpuprov/tls/ca.crt"
CA_DIR = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki"
PASSPHRASE = "front-test-ca-passphrase"
READY = "https://localhost:8443/v2/health/ready"
MUTUAL = {"tls_ca_dir": str(CA_DIR), "tls_ca_passphrase": PASSPHRASE, "tls_front_mutual_tls": True,
          "tls_client_names": ["lab-client", "other-client"], "tls_front_client_allowed_names": ["lab-client"]}


def _server_ca_certificate(tmp: Path) -> tuple[Path, Path]:
    """A client certificate signed by the server CA (the CA mutual TLS trusted before it had a client
    CA of its own), with openssl on the controller."""
    key, csr, crt = tmp / "server-ca-client.key", tmp / "client.csr", tmp / "server-ca-client.crt"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=lab-client", "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(CA_DIR / "ca.crt"), "-CAkey",
                    str(CA_DIR / "ca.key"), "-passin", f"pass:{PASSPHRASE}", "-days", "1", "-out", str(crt)],
                   check=True, capture_output=True)
    return key, crt


@pytest.fixture(scope="module")
def clients(tmp_path_factory) -> None:
    """The clients' keys and certificates on the host, under /root: the client CA's (made by the tls
    role on the controller) and one from the server CA."""
    host = instance(HOST)
    issued = CA_DIR / "clients"
    files = [*_server_ca_certificate(tmp_path_factory.mktemp("server-ca"))] + [
        issued / f"{n}.{ext}" for n in ("lab-client", "other-client", "gpuprov-probe") for ext in ("key", "crt")]
    for path in files:
        host.check_output(f"cat > /root/{path.name} <<'PEM'\n{path.read_text()}PEM")


def _status(client: str | None) -> str:
    cert = f"--cert /root/{client}.crt --key /root/{client}.key" if client else ""
    return instance(HOST).run(f"curl -sS -o /dev/null -w '%{{http_code}}' --cacert {CA} {cert} {READY}").stdout


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_roles_own_verify_passes():
    """`gpuprov verify`'s checks hold no client certificate: nginx's 400 still proves the handshake
    and the CA."""
    checks = assert_role_verify("tls_front", [HOST], {
        "TLS front: nginx active": PASS,
        "TLS front: HTTPS with a verified certificate, Triton ready behind it": PASS,
        "TLS front: Triton's own routes refused": PASS,
        "TLS front: TLS 1.2 refused": PASS,
    })
    assert any("mutual TLS: no client certificate here" in c.found for c in checks), [c.found for c in checks]


def test_only_the_client_cas_certificates_on_the_allow_list_get_in(clients):
    """The defect this replaced: mutual TLS trusted whatever CA signed the server certificate. No
    certificate, or one from the server CA, is refused (400); the client CA's certificate on the
    allow-list gets in (its DN in the audit log), the probes' always; another of its names gets 403."""
    host = instance(HOST)
    assert _status(None) == "400"  # nginx: no required SSL certificate was sent
    assert _status("server-ca-client") == "400"  # the server CA's certificate: not a client CA's
    admitted = host.run(f"curl -sS --cacert {CA} --cert /root/lab-client.crt --key /root/lab-client.key {READY}")
    assert admitted.rc == 0 and admitted.stdout.strip() == "ready from the stand-in"
    assert '"CN=lab-client"' in host.file("/var/log/gpuprov/api-access.log").content_string
    assert _status("gpuprov-probe") == "200"
    assert _status("other-client") == "403"


def test_a_revoked_certificate_is_refused_once_the_crl_lists_it(clients):
    revoked = {**MUTUAL, "tls_client_names": ["other-client"], "tls_client_revoked": ["lab-client"]}
    result, events = run_role("tls_front", revoked, pre_roles=("tls",))
    assert result.rc == 0, failed_tasks(events)
    assert _status("lab-client") == "400"  # revoked: the CRL lists it
    assert _status("gpuprov-probe") == "200"
    again, _ = run_role("tls_front", revoked, pre_roles=("tls",))
    assert again.rc == 0 and again.recaps[0].changed == 0


def test_z_turning_mutual_tls_off_admits_clients_without_a_certificate():
    """Last: the setting taken away on this converged host."""
    back, events = run_role("tls_front", {})
    assert back.rc == 0, failed_tasks(events)
    assert instance(HOST).run(f"curl -sS -f -o /dev/null --cacert {CA} {READY}").rc == 0
