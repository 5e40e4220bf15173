"""`models_name: auto` picks the largest catalog entry whose weights plus KV headroom fit the GPUs,
and an explicit model that cannot fit fails in preflight with the numbers. Runs the role's real
preflight tasks through gpuprov's runner on localhost, with the gpu fact given as recorded shapes
(the H200 one is the device machine's real recording)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import write_local_inventory

from gpuprov.runner import RunRequest, run

ROOT = Path(__file__).resolve().parent.parent
H200 = json.loads((ROOT / "tests/fixtures/gpu/h200-x1.expected.json").read_text())


def _gpus(count: int, mib: int) -> dict:
    return {"status": "ok", "gpu_count": count, "gpus": [{"memory_total_mib": mib}] * count}


def _choose(tmp_path: Path, gpu: dict, **extra) -> tuple[int, list[dict]]:
    play = [{"name": "Choose", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Run the models preflight",
         "ansible.builtin.include_role": {"name": "models", "tasks_from": "preflight"}},
        {"name": "Report", "ansible.builtin.debug": {"msg": "{{ __models_model_name }}"}},
    ]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    write_local_inventory(tmp_path / "hosts.yml", group="gpu_servers")
    events: list[dict] = []
    result = run(RunRequest(command="test-models-auto", playbook=str(tmp_path / "play.yml"),
                            inventories=[str(tmp_path / "hosts.yml")],
                            extra_vars=[json.dumps({"ansible_local": {"gpu": gpu}, **extra})]),
                 on_event=lambda _t, e: events.append(e))
    return result.rc, events


def _reported(events: list[dict], task: str) -> list[str]:
    return [str(e["event_data"]["res"].get("msg")) for e in events
            if e.get("event") in ("runner_on_ok", "runner_on_failed") and e["event_data"].get("task") == task]


NATIVE: dict[str, str] = {}
CONTAINER = {"triton_runtime": "container"}


@pytest.mark.parametrize("gpu, runtime, expected", [
    ({"status": "no_gpu", "gpu_count": 0, "gpus": []}, NATIVE, "tiny-deepseek"),
    (_gpus(1, 23034), NATIVE, "deepseek-r1-distill-llama-8b"),     # 1x 24 GB (L4): 14.96 GiB x 1.25 fits
    (_gpus(1, 81559), NATIVE, "deepseek-r1-distill-qwen-32b"),     # 1x 80 GB (H100): 61.03 x 1.25 = 76.3 GiB
    (_gpus(8, 143771), CONTAINER, "deepseek-r1"),                  # 8x 141 GB (H200): 641.3 x 1.25 = 801.6 GiB
    (_gpus(8, 81559), CONTAINER, "deepseek-r1-distill-llama-70b"),  # 8x H100: 637 GiB, V3/R1 does not fit
    # The native runtime serves from one GPU: the largest that one GPU holds, however many there are.
    (_gpus(8, 81559), NATIVE, "deepseek-r1-distill-qwen-32b"),
    (_gpus(8, 143771), NATIVE, "deepseek-r1-distill-qwen-32b"),
    (H200, NATIVE, "deepseek-r1-distill-qwen-32b"),  # the recorded 1x H200: 140.4 GiB < 164.2 GiB for the 70B
])
def test_auto_picks_the_largest_that_fits(tmp_path, gpu, runtime, expected):
    rc, events = _choose(tmp_path, gpu, models_name="auto", **runtime)
    assert rc == 0
    assert _reported(events, "Report") == [expected]
    reason = _reported(events, "Report the choice")[0]
    assert "chosen by auto" in reason


def test_an_explicit_model_that_cannot_fit_fails_with_the_numbers(tmp_path):
    rc, events = _choose(tmp_path, _gpus(1, 81559), models_name="deepseek-r1-distill-llama-70b")
    assert rc != 0
    msg = _reported(events, "Check the model fits the GPUs")[0]
    assert "needs 164.2 GiB of GPU memory (131.4 GiB of weights x 1.25" in msg
    assert "this host has 1 GPU(s) of 79.6 GiB (79.6 GiB)" in msg


def test_the_native_runtime_is_not_given_a_model_one_gpu_cannot_hold(tmp_path):
    rc, events = _choose(tmp_path, _gpus(8, 81559), models_name="deepseek-r1-distill-llama-70b")
    assert rc != 0
    msg = _reported(events, "Check the model fits the GPUs")[0]
    assert "this host has 8 GPU(s) of 79.6 GiB (636.8 GiB), and one model is served from 1 of them (79.6 GiB" in msg
    assert "triton_runtime container spreads a model over every GPU" in msg
    # The container runtime places it over the eight.
    rc, _ = _choose(tmp_path, _gpus(8, 81559), models_name="deepseek-r1-distill-llama-70b", **CONTAINER)
    assert rc == 0


def test_v3_needs_eight_gpus(tmp_path):
    rc, events = _choose(tmp_path, _gpus(4, 143771), models_name="deepseek-v3", **CONTAINER)
    assert rc != 0
    assert ("on at least 8 GPU(s); this host has 4 GPU(s) of 140.4 GiB"
            in _reported(events, "Check the model fits the GPUs")[0])
