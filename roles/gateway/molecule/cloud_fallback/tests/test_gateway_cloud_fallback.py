"""The gateway with the cloud fallback on (converge.yml, molecule.yml) on Debian 12, nothing local
serving (no Triton): the endpoint's key in a file of its own, never in the configuration; a key that
may fall back is served by the stand-in cloud, which gets the endpoint's key and model; a key that
may not is refused, so its prompt stays on site; `gpuprov verify`'s checks pass through the cloud;
and the endpoint removed (last), its key file goes too."""

from __future__ import annotations

import json

from gpuprov_molecule import (
    assert_no_changes_in_check_mode,
    assert_role_verify,
    failed_tasks,
    gateway_completion,
    host_in,
    instance,
    run_role,
)

from gpuprov.verify import PASS

HOST = host_in("debian12")
APP = "molecule-gateway-app-key-00000000000000"
OLD = "molecule-gateway-old-key-00000000000000"
CLOUD_KEY = "sk-molecule-cloud-key-0000000000000000"
KEY_FILE = "/etc/gpuprov-gateway/cloud-cloud-a.key"


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_endpoints_key_is_a_file_of_its_own():
    host = instance(HOST)
    key_file = host.file(KEY_FILE)
    assert key_file.mode == 0o640 and key_file.user == "root" and key_file.group == "gpuprov"
    assert key_file.content_string.strip() == CLOUD_KEY
    assert CLOUD_KEY not in host.file("/etc/gpuprov-gateway/gateway.yaml").content_string


def test_the_roles_own_verify_passes_through_the_cloud():
    """Ready (the cloud's breaker is closed) and a completion with the first user key (`app`, which
    may fall back) answered."""
    host = instance(HOST)
    host.check_output("rm -f /tmp/cloud-seen.jsonl")
    assert_role_verify("gateway", [HOST], {
        "Gateway: service active": PASS,
        "Gateway: a request without a key is refused (401)": PASS,
        "Gateway: ready": PASS,
        "Gateway: an authenticated completion answers": PASS,
    })
    seen = [json.loads(line) for line in host.check_output("cat /tmp/cloud-seen.jsonl").splitlines()]
    assert [s["path"] for s in seen] == ["/v1/chat/completions"], seen


def test_a_key_that_may_fall_back_is_served_by_the_cloud():
    host = instance(HOST)
    host.check_output("rm -f /tmp/cloud-seen.jsonl")
    status, body, headers = gateway_completion(host, APP)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "from the cloud"
    assert "x-backend: cloud-a" in headers.lower()
    seen = [json.loads(line) for line in host.check_output("cat /tmp/cloud-seen.jsonl").splitlines()]
    assert seen == [{"path": "/v1/chat/completions", "auth": f"Bearer {CLOUD_KEY}", "model": "deepseek-chat"}]


def test_a_key_that_may_not_fall_back_is_refused():
    """Its prompt stays on site: 503 with nothing local, and the cloud never sees it."""
    host = instance(HOST)
    host.check_output("rm -f /tmp/cloud-seen.jsonl")
    status, body, headers = gateway_completion(host, OLD)
    assert status == 503, body
    assert "retry-after:" in headers.lower()
    assert not host.file("/tmp/cloud-seen.jsonl").exists


def test_z_the_endpoint_removed_its_key_file_goes_too():
    """Last: the fallback turned off on this converged host."""
    host = instance(HOST)
    keys = [{"id": "app", "owner": "test", "key": APP, "role": "user", "models": ["*"]}]
    back, events = run_role("gateway", {"gateway_fallback_enabled": False, "gateway_cloud_endpoints": [],
                                        "gateway_api_keys": keys}, pre_roles=("gpu_facts",))
    assert back.rc == 0, failed_tasks(events)
    assert not host.file(KEY_FILE).exists
    assert CLOUD_KEY not in host.file("/etc/gpuprov-gateway/gateway.yaml").content_string
