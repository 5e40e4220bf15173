"""The internal CA on the controller is never replaced by a run: the tls role's preflight, run by real
ansible-playbook processes on a local host, with CA keys made by openssl. A passphrase that does not
open the CA key fails before anything changes; each inventory gets a CA directory of its own; a CA
left in the shared directory of earlier versions is named, never silently replaced."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import yaml
from conftest import first_failure, write_local_inventory

from gpuprov.runner import RunRequest, run

PASSPHRASE = "the-right-passphrase"


def _ca_key(path: Path, passphrase: str) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-aes256",
                    "-pass", f"pass:{passphrase}", "-out", str(path)], check=True, capture_output=True)
    return path.read_bytes()


def _preflight(tmp_path: Path, inventory_dir: Path, **extra: str | bool) -> tuple[int, list[dict], str]:
    """The tls preflight from a playbook in tmp_path/playbooks (so playbook_dir/../.gpuprov is tmp_path's)."""
    books = tmp_path / "playbooks"
    books.mkdir(exist_ok=True)
    (books / "play.yml").write_text(yaml.safe_dump([{
        "name": "Preflight", "hosts": "all", "gather_facts": False, "tasks": [
            {"name": "Run the tls preflight",
             "ansible.builtin.include_role": {"name": "tls", "tasks_from": "preflight", "public": True}},
            {"name": "Say where the CA is", "ansible.builtin.debug": {"msg": "{{ tls_ca_dir }}"}},
        ]}]))
    inventory_dir.mkdir(parents=True, exist_ok=True)
    write_local_inventory(inventory_dir / "hosts.yml")
    events: list[dict] = []
    result = run(RunRequest(command="test-tls-ca", playbook=str(books / "play.yml"),
                            inventories=[str(inventory_dir / "hosts.yml")],
                            extra_vars=[json.dumps({"tls_ca_passphrase": PASSPHRASE, **extra})]),
                 on_event=lambda _t, e: events.append(e))
    said = [e["event_data"]["res"].get("msg", "") for e in events if e.get("event") == "runner_on_ok"
            and e["event_data"].get("task") == "Say where the CA is"]
    return result.rc, events, said[0] if said else ""


def test_each_inventory_has_a_ca_directory_of_its_own(tmp_path):
    rc_a, _, dir_a = _preflight(tmp_path, tmp_path / "inventories" / "prod")
    rc_b, _, dir_b = _preflight(tmp_path, tmp_path / "elsewhere" / "prod")
    assert rc_a == rc_b == 0
    digest = hashlib.sha256(str(tmp_path / "inventories" / "prod").encode()).hexdigest()[:8]
    assert Path(dir_a).name == f"prod-{digest}" and Path(dir_a).parent.resolve() == (tmp_path / ".gpuprov/pki")
    assert dir_a != dir_b, "two inventories named alike share a CA"


def test_a_passphrase_that_does_not_open_the_ca_key_fails_before_any_change(tmp_path):
    inv = tmp_path / "inventories" / "prod"
    rc, _, ca_dir = _preflight(tmp_path, inv)
    assert rc == 0
    key = Path(ca_dir) / "ca.key"
    before = _ca_key(key, "another-inventorys-passphrase")
    rc, events, _ = _preflight(tmp_path, inv)
    assert rc != 0
    task, msg = first_failure(events)
    assert task == "Check the CA keys open with tls_ca_passphrase"
    assert "does not open with tls_ca_passphrase" in msg and "Rotating the CA" in msg and "Nothing was changed" in msg
    assert PASSPHRASE not in json.dumps(events)
    assert key.read_bytes() == before
    # The right passphrase opens it.
    _ca_key(key, PASSPHRASE)
    assert _preflight(tmp_path, inv)[0] == 0


def test_a_client_ca_key_the_passphrase_does_not_open_fails_before_any_change(tmp_path):
    """Mutual TLS's client CA sits beside the server CA under the same passphrase, and is kept the
    same way: a key that passphrase does not open is named, never replaced."""
    inv = tmp_path / "inventories" / "prod"
    rc, _, ca_dir = _preflight(tmp_path, inv)
    assert rc == 0
    _ca_key(Path(ca_dir) / "ca.key", PASSPHRASE)
    client = Path(ca_dir) / "client-ca.key"
    before = _ca_key(client, "another-inventorys-passphrase")
    assert _preflight(tmp_path, inv)[0] == 0  # without mutual TLS the client CA is not used
    rc, events, _ = _preflight(tmp_path, inv, tls_client_ca_enabled=True)
    assert rc != 0
    task, msg = first_failure(events)
    assert task == "Check the CA keys open with tls_ca_passphrase"
    assert f"{client} does not open" in msg and str(Path(ca_dir) / "ca.key") not in msg
    assert client.read_bytes() == before


def test_a_ca_in_the_shared_directory_of_earlier_versions_is_named_not_replaced(tmp_path):
    legacy = tmp_path / ".gpuprov" / "pki" / "ca.key"
    before = _ca_key(legacy, PASSPHRASE)
    rc, events, _ = _preflight(tmp_path, tmp_path / "inventories" / "prod")
    assert rc != 0
    task, msg = first_failure(events)
    assert task == "Check no earlier CA is left behind"
    assert "Move it to the inventory it belongs to" in msg and "mv .gpuprov/pki/ca.*" in msg
    assert legacy.read_bytes() == before
    # Named explicitly, the old directory is used as it is.
    rc, _, ca_dir = _preflight(tmp_path, tmp_path / "inventories" / "prod", tls_ca_dir=str(legacy.parent))
    assert rc == 0 and ca_dir == str(legacy.parent)
