"""models from the two sources the default scenario does not converge (converge.yml): `hf` on
Debian 12, against a stand-in of the Hugging Face hub's API served over HTTPS that answers only
with the token, and `path` on Debian 13 (files already on the host, verified in place). Zero changes
in check mode; the hub's files of the pinned revision in place and the token in no event or
artifact of a run that sent it; a wrong token fails before any change and the model stays; a path
whose file no longer matches its manifest is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from gpuprov_molecule import (
    assert_no_changes_in_check_mode,
    failed_tasks,
    host_in,
    instance,
    run_playbook,
    run_role,
)

SHIPPED = json.loads((Path(__file__).resolve().parents[3] / "files/tiny-deepseek/manifest.json").read_text())
ROOT = "/var/lib/gpuprov/models"
HF, PATH = host_in("debian12"), host_in("debian13")
HUB_REV = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_gpuprov_test_token_7c1e"  # converge.yml's, the only one the stand-in hub answers
CONVERGE = Path(__file__).resolve().parents[1] / "converge.yml"


def _model_fact(name: str) -> dict:
    fact = instance(name).file("/etc/ansible/facts.d/model.fact")
    return json.loads(fact.content_string)


def _assert_token_not_shown(result, events) -> None:
    assert TOKEN not in json.dumps(events)
    for path in Path(result.run_dir).rglob("*"):
        if path.is_file():
            assert TOKEN not in path.read_text(errors="replace"), path


def _converge_vars(play_name: str) -> dict:
    """The models role's vars in converge.yml's play of that name (of its templates only the hf
    endpoint's, filled in here)."""
    play = next(p for p in yaml.safe_load(CONVERGE.read_text()) if p["name"] == play_name)
    settings = dict(next(r for r in play["roles"] if r["role"] == "models")["vars"])
    if "models_hf_endpoint" in settings:
        settings["models_hf_endpoint"] = f"https://{host_in('model_hubs')}/hub"
    return settings


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_hubs_files_of_the_pinned_revision_are_in_place():
    host = instance(HF)
    base = f"{ROOT}/tiny-hub"
    assert host.file(f"{base}/current").linked_to == f"{base}/{HUB_REV}"
    for f in SHIPPED["files"]:  # every file the catalog's patterns match, and nothing else
        fh = host.file(f"{base}/current/{f['path']}")
        assert (fh.user, fh.group, fh.mode) == ("root", "gpuprov", 0o440)
        assert fh.sha256sum == f["sha256"]
    assert not host.file(f"{base}/current/README.md").exists
    assert _model_fact(HF) == {"name": "tiny-hub", "revision": HUB_REV, "path": f"{base}/current",
                                  "architecture": "Qwen2ForCausalLM", "repo": "gpuprov-test/tiny-deepseek"}


def test_the_token_reached_the_hub_and_no_runs_output():
    """A check-mode run of converge.yml asks the hub again with the token (the hub answers only
    with it): the token is in none of its events and none of its artifacts."""
    hub = instance(host_in("model_hubs"))
    asked = hub.check_output("grep -c ' 200 ' /var/log/nginx/hub.log")
    result, events = run_playbook(CONVERGE, check=True, limit=HF)
    assert result.rc == 0 and result.tracker.changes == [], failed_tasks(events)
    assert int(hub.check_output("grep -c ' 200 ' /var/log/nginx/hub.log")) > int(asked)
    _assert_token_not_shown(result, events)


def test_a_wrong_token_fails_before_any_change_and_the_model_stays():
    settings = _converge_vars("Converge the hf source")
    result, events = run_role("models", {**settings, "models_hf_token": "hf_wrong_token"}, pre_roles=("gpu_facts",),
                              limit=HF)
    assert [t for _, t, _ in failed_tasks(events)] == ["Ask the hub for the files of the pinned revision"]
    assert result.recaps[0].changed == 0
    assert instance(HF).file(f"{ROOT}/tiny-hub/current").linked_to == f"{ROOT}/tiny-hub/{HUB_REV}"
    _assert_token_not_shown(result, events)


def test_the_path_source_is_verified_in_place_and_not_copied():
    host = instance(PATH)
    assert _model_fact(PATH) == {"name": "tiny-deepseek", "revision": SHIPPED["revision"], "path": "/srv/own",
                                       "architecture": "Qwen2ForCausalLM", "repo": ""}
    assert not host.file(f"{ROOT}/tiny-deepseek").exists


@pytest.fixture
def altered_file():
    host = instance(PATH)
    host.check_output("cp /srv/own/tokenizer.json /tmp/tokenizer.json && echo x >> /srv/own/tokenizer.json")
    yield
    host.check_output("cp /tmp/tokenizer.json /srv/own/tokenizer.json")


def test_z_a_file_that_no_longer_matches_its_manifest_is_refused(altered_file):
    settings = _converge_vars("Converge the path source")
    result, events = run_role("models", settings, pre_roles=("gpu_facts",), limit=PATH)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Check every file matches its manifest"]
    assert "1 file(s) in /srv/own are missing or do not match manifest.json: tokenizer.json" in failures[0][2]
    assert result.recaps[0].changed == 0
