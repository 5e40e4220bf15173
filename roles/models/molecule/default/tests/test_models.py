"""models on Debian 12 (from the mirror container) and Debian 13 (pushed from the controller):
tiny-deepseek in place, verified, root:gpuprov 0440, `current` switched; zero changes in check
mode. Against the mirror (HTTPS): a new revision is fetched; a corrupted update is refused and the old
model stays; a changed file with a regenerated manifest is refused by the pinned digest; an
interrupted download resumes with an HTTP range; too little disk fails before fetching; bad input
fails in preflight. The hf and path sources are the `sources` scenario's."""

import json
import os
from pathlib import Path

import pytest
from gpuprov_molecule import (
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    failed_tasks,
    instance,
    run_role,
)

SHIPPED = json.loads((Path(__file__).resolve().parents[3] / "files/tiny-deepseek/manifest.json").read_text())
ROOT = "/var/lib/gpuprov/models"
TOKEN = "hf_gpuprov_test_token_7c1e"  # refused in preflight over http, never sent
D12 = "gpuprov-models-debian12"
# The host-level tests run on the model hosts, not on the mirror.
testinfra_hosts = [f"ansible://gpu_servers?ansible_inventory={os.environ.get('MOLECULE_INVENTORY_FILE', '')}"]


def test_model_in_place(host):
    base = f"{ROOT}/tiny-deepseek"
    assert host.file(f"{base}/current").is_symlink
    assert host.file(f"{base}/current").linked_to == f"{base}/{SHIPPED['revision']}"
    d = host.file(base)
    assert (d.user, d.group, d.mode) == ("root", "gpuprov", 0o750)
    for f in SHIPPED["files"]:
        fh = host.file(f"{base}/current/{f['path']}")
        assert (fh.user, fh.group, fh.mode) == ("root", "gpuprov", 0o440)
        assert fh.sha256sum == f["sha256"]
    recorded = json.loads(host.file(f"{base}/current/gpuprov-manifest.json").content_string)
    assert [(f["path"], f["sha256"]) for f in recorded["files"]] == [(f["path"], f["sha256"]) for f in SHIPPED["files"]]
    assert not host.file(f"{base}/.incoming").exists or host.run(f"ls -A {base}/.incoming").stdout == ""


def test_model_fact(host):
    fact = json.loads(host.file("/etc/ansible/facts.d/model.fact").content_string)
    assert fact == {"name": "tiny-deepseek", "revision": SHIPPED["revision"], "path": f"{ROOT}/tiny-deepseek/current",
                    "architecture": "Qwen2ForCausalLM", "repo": ""}


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


@pytest.fixture(scope="module")
def mirror():
    return instance("gpuprov-mirror")


@pytest.fixture(scope="module")
def d12():
    return instance(D12)


PUBLISH = r"""
import hashlib, json, os, shutil, sys
name, revision, mode = sys.argv[1], sys.argv[2], sys.argv[3]
src, dst = "/srv/mirror/tiny-deepseek", f"/srv/mirror/{name}"
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst)
cfg = json.load(open(f"{dst}/config.json"))
cfg["gpuprov_test_revision"] = revision          # new content, new checksum
if mode == "altered":                             # the same revision, other bytes
    cfg["gpuprov_test_altered"] = True
json.dump(cfg, open(f"{dst}/config.json", "w"))
files = []
for f in sorted(os.listdir(dst)):
    if f != "manifest.json":
        data = open(f"{dst}/{f}", "rb").read()
        files.append({"path": f, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
json.dump({"name": name, "revision": revision, "files": files}, open(f"{dst}/manifest.json", "w"))
if mode == "corrupt":  # config.json differs in every revision (no reuse): one byte changed after the manifest
    with open(f"{dst}/config.json", "r+b") as fh:
        fh.seek(10); b = fh.read(1); fh.seek(10); fh.write(bytes([b[0] ^ 0x01]))
os.system(f"chmod -R a+rX {dst}")
pin = hashlib.sha256(open(f"{dst}/manifest.json", "rb").read()).hexdigest()
print(json.dumps({"files": files, "manifest_sha256": pin}))
"""


def _publish(mirror, name, revision, mode="ok"):
    """Publish `name` at `revision` on the mirror; (its files, the sha256 of its manifest.json)."""
    out = json.loads(mirror.check_output("python3 -c %s %s %s %s", PUBLISH, name, revision, mode))
    return out["files"], out["manifest_sha256"]


def _entry(revision, repo=""):
    return {"repo": repo, "revision": revision, "architecture": "Qwen2ForCausalLM", "params_b": 0.0002,
            "dtypes": ["float32"], "weights_gib": 0.001, "min_gpus": 0, "files": ["*.json", "*.safetensors"]}


def _from_mirror(name, revision, pin, **extra):
    return run_role("models", {"models_name": name, "models_source": "mirror",
                               "models_mirror_url": f"https://gpuprov-mirror/{name}",
                               "models_mirror_manifest_sha256": pin,
                               "models_catalog_extra": {name: _entry(revision)}, **extra},
                    pre_roles=("gpu_facts",), limit=D12)


def _sync_result(events):
    return next(e["event_data"]["res"] for e in events if e.get("event") == "runner_on_ok"
                and e["event_data"].get("task") == "Fetch, verify and switch to the model")


def test_corrupted_update_is_refused_and_the_old_model_stays(mirror, d12):
    _, pin = _publish(mirror, "tiny-next", "next1")
    result, events = _from_mirror("tiny-next", "next1", pin)
    assert failed_tasks(events) == []
    assert d12.file(f"{ROOT}/tiny-next/current").linked_to == f"{ROOT}/tiny-next/next1"

    _, pin = _publish(mirror, "tiny-next", "next2", mode="corrupt")
    result, events = _from_mirror("tiny-next", "next2", pin)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Fetch, verify and switch to the model"]
    assert "checksum mismatch for config.json" in failures[0][2]
    assert "is unchanged" in failures[0][2]
    assert d12.file(f"{ROOT}/tiny-next/current").linked_to == f"{ROOT}/tiny-next/next1"
    assert not d12.file(f"{ROOT}/tiny-next/.staging-next2/config.json").exists  # discarded
    assert "gpuprov_test_revision\": \"next1" in d12.file(f"{ROOT}/tiny-next/current/config.json").content_string


def test_a_changed_file_with_a_regenerated_manifest_is_refused(mirror, d12):
    """Whoever changes a mirror's file can regenerate its manifest: only the pinned digest catches it."""
    _, pin = _publish(mirror, "tiny-pin", "p1")
    result, events = _from_mirror("tiny-pin", "p1", pin)
    assert failed_tasks(events) == []
    served = d12.file(f"{ROOT}/tiny-pin/current/config.json").content_string

    _, altered = _publish(mirror, "tiny-pin", "p1", mode="altered")
    assert altered != pin
    result, events = _from_mirror("tiny-pin", "p1", pin)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Check the mirror's manifest is the pinned one"]
    assert f"has sha256 {altered}, pinned {pin}" in failures[0][2]
    assert result.recaps[0].changed == 0
    assert d12.file(f"{ROOT}/tiny-pin/current/config.json").content_string == served
    assert "gpuprov_test_altered" not in served


def test_mirror_serving_another_revision_is_refused(mirror):
    _, pin = _publish(mirror, "tiny-pinned", "served-rev")
    result, events = _from_mirror("tiny-pinned", "pinned-rev", pin)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Check the mirror serves the pinned revision"]
    assert "revision 'served-rev'" in failures[0][2] and "pinned to revision 'pinned-rev'" in failures[0][2]
    assert result.recaps[0].changed == 0


def test_interrupted_download_resumes(mirror, d12):
    files, pin = _publish(mirror, "tiny-resume", "r1")
    size = next(f["size"] for f in files if f["path"] == "model.safetensors")
    # An interrupted transfer: the first 300000 bytes arrived in staging, then the connection died.
    d12.check_output("python3 -c %s", (
        "import os, urllib.request; d = '/var/lib/gpuprov/models/tiny-resume/.staging-r1'; os.makedirs(d); "
        "r = urllib.request.urlopen('https://gpuprov-mirror/tiny-resume/model.safetensors'); "
        "open(d + '/model.safetensors', 'wb').write(r.read(300000))"))
    result, events = _from_mirror("tiny-resume", "r1", pin)
    assert failed_tasks(events) == []
    sync = _sync_result(events)
    others = sum(f["size"] for f in files if f["path"] != "model.safetensors")
    assert sync["bytes_fetched"] == others + size - 300000
    assert ' 206 ' in mirror.check_output("grep 'GET /tiny-resume/model.safetensors' /var/log/nginx/mirror.log")
    assert d12.file(f"{ROOT}/tiny-resume/current/model.safetensors").size == size


def test_too_little_disk_fails_before_fetching(mirror, d12):
    _, pin = _publish(mirror, "tiny-big", "b1")
    result, events = _from_mirror("tiny-big", "b1", pin, models_free_margin_gib=1000000)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Fetch, verify and switch to the model"]
    assert "not enough free disk" in failures[0][2] and "GiB free; nothing was fetched" in failures[0][2]
    assert d12.run(f"ls -A {ROOT}/tiny-big/.staging-b1").stdout == ""


@pytest.mark.parametrize("extra, task, words", [
    ({"models_source": "bogus"}, "Validating arguments", "models_source"),
    ({"models_name": "nope"}, "Check the model is in the catalog", "models_name 'nope' is not in the catalog"),
    ({"models_name": "deepseek-r1"}, "Check the model fits the GPUs", "needs 801.6 GiB of GPU memory"),
    ({"models_source": "mirror"}, "Check the source and its settings", "mirror needs models_mirror_url"),
    # A mirror over https only, and its manifest's digest pinned.
    ({"models_source": "mirror", "models_mirror_url": "http://gpuprov-mirror/tiny-deepseek",
      "models_mirror_manifest_sha256": "0" * 64},
     "Check the source and its settings", "mirror needs models_mirror_url https://"),
    ({"models_source": "mirror", "models_mirror_url": "https://gpuprov-mirror/tiny-deepseek"},
     "Check the mirror's manifest is pinned", "the sha256 of the mirror's manifest.json pinned"),
    # The token goes to the hub over https only.
    ({"models_source": "hf", "models_hf_token": TOKEN, "models_hf_endpoint": "http://gpuprov-mirror/hub"},
     "Check the source and its settings", "models_hf_endpoint over https"),
])
def test_bad_input_fails_before_any_change(extra, task, words):
    assert_fails_before_any_change("models", extra, task, words, limit="gpu_servers")
