"""`models_name: auto` picks the largest catalog entry whose weights plus KV headroom fit the GPUs,
and an explicit model that cannot fit fails in preflight with the numbers. Runs the role's real
preflight tasks through gpuprov's runner on localhost, with the gpu fact given as recorded shapes
(the H200 one is the device machine's real recording)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import failed_tasks_of, run_local_cases

ROOT = Path(__file__).resolve().parent.parent
H200 = json.loads((ROOT / "tests/fixtures/gpu/h200-x1.expected.json").read_text())


def _gpus(count: int, mib: int) -> dict:
    return {"status": "ok", "gpu_count": count, "gpus": [{"memory_total_mib": mib}] * count}


NATIVE: dict[str, str] = {}
CONTAINER = {"triton_runtime": "container"}
L4, H100, H200_141 = 23034, 81559, 143771

# Every case is a host of one run (the role's preflight per host, Ansible's start-up once): its
# name -> (gpu fact, variables).
CASES: dict[str, tuple[dict, dict]] = {
    "auto-no-gpu": ({"status": "no_gpu", "gpu_count": 0, "gpus": []}, {"models_name": "auto", **NATIVE}),
    "auto-1xl4": (_gpus(1, L4), {"models_name": "auto", **NATIVE}),
    "auto-1xh100": (_gpus(1, H100), {"models_name": "auto", **NATIVE}),
    "auto-8xh200-container": (_gpus(8, H200_141), {"models_name": "auto", **CONTAINER}),
    "auto-8xh100-container": (_gpus(8, H100), {"models_name": "auto", **CONTAINER}),
    "auto-8xh100-native": (_gpus(8, H100), {"models_name": "auto", **NATIVE}),
    "auto-8xh200-native": (_gpus(8, H200_141), {"models_name": "auto", **NATIVE}),
    "auto-recorded-h200": (H200, {"models_name": "auto", **NATIVE}),
    "70b-on-1xh100": (_gpus(1, H100), {"models_name": "deepseek-r1-distill-llama-70b"}),
    "70b-on-8xh100-native": (_gpus(8, H100), {"models_name": "deepseek-r1-distill-llama-70b"}),
    "70b-on-8xh100-container": (_gpus(8, H100), {"models_name": "deepseek-r1-distill-llama-70b", **CONTAINER}),
    "v3-on-4xh200": (_gpus(4, H200_141), {"models_name": "deepseek-v3", **CONTAINER}),
}


@pytest.fixture(scope="module")
def chosen(tmp_path_factory) -> dict[str, tuple[bool, list[dict]]]:
    """Every case through the models role's real preflight in one run on localhost (one host per
    case, each with its own gpu fact and variables): name -> (whether the host failed, its events)."""
    hosts = {name: {"gpuprov_test_local": {"gpu": gpu}, **variables} for name, (gpu, variables) in CASES.items()}
    events = run_local_cases(tmp_path_factory.mktemp("models-auto"), "test-models-auto", hosts, [
        {"name": "Run the models preflight",
         "ansible.builtin.include_role": {"name": "models", "tasks_from": "preflight"}},
        {"name": "Report", "ansible.builtin.debug": {"msg": "{{ __models_model_name }}"}},
    ])
    return {name: (bool(failed_tasks_of(mine)), mine) for name, mine in events.items()}


def _reported(events: list[dict], task: str) -> list[str]:
    return [str(e["event_data"]["res"].get("msg")) for e in events
            if e.get("event") in ("runner_on_ok", "runner_on_failed") and e["event_data"].get("task") == task]


@pytest.mark.parametrize("case, expected", [
    ("auto-no-gpu", "tiny-deepseek"),
    ("auto-1xl4", "deepseek-r1-distill-llama-8b"),             # 1x 24 GB (L4): 14.96 GiB x 1.25 fits
    ("auto-1xh100", "deepseek-r1-distill-qwen-32b"),           # 1x 80 GB (H100): 61.03 x 1.25 = 76.3 GiB
    ("auto-8xh200-container", "deepseek-r1"),                  # 8x 141 GB (H200): 641.3 x 1.25 = 801.6 GiB
    ("auto-8xh100-container", "deepseek-r1-distill-llama-70b"),  # 8x H100: 637 GiB, V3/R1 does not fit
    # The native runtime serves from one GPU: the largest that one GPU holds, however many there are.
    ("auto-8xh100-native", "deepseek-r1-distill-qwen-32b"),
    ("auto-8xh200-native", "deepseek-r1-distill-qwen-32b"),
    ("auto-recorded-h200", "deepseek-r1-distill-qwen-32b"),   # the recorded 1x H200: 140.4 GiB < 164.2 GiB for the 70B
])
def test_auto_picks_the_largest_that_fits(chosen, case, expected):
    failed, events = chosen[case]
    assert not failed, _reported(events, "Check the model fits the GPUs")
    assert _reported(events, "Report") == [expected]
    reason = _reported(events, "Report the choice")[0]
    assert "chosen by auto" in reason


def test_an_explicit_model_that_cannot_fit_fails_with_the_numbers(chosen):
    failed, events = chosen["70b-on-1xh100"]
    assert failed
    msg = _reported(events, "Check the model fits the GPUs")[0]
    assert "needs 164.2 GiB of GPU memory (131.4 GiB of weights x 1.25" in msg
    assert "this host has 1 GPU(s) of 79.6 GiB (79.6 GiB)" in msg


def test_the_native_runtime_is_not_given_a_model_one_gpu_cannot_hold(chosen):
    failed, events = chosen["70b-on-8xh100-native"]
    assert failed
    msg = _reported(events, "Check the model fits the GPUs")[0]
    assert "this host has 8 GPU(s) of 79.6 GiB (636.8 GiB), and one model is served from 1 of them (79.6 GiB" in msg
    assert "triton_runtime container spreads a model over every GPU" in msg
    # The container runtime places it over the eight.
    failed, events = chosen["70b-on-8xh100-container"]
    assert not failed and _reported(events, "Report") == ["deepseek-r1-distill-llama-70b"]


def test_v3_needs_eight_gpus(chosen):
    failed, events = chosen["v3-on-4xh200"]
    assert failed
    assert ("on at least 8 GPU(s); this host has 4 GPU(s) of 140.4 GiB"
            in _reported(events, "Check the model fits the GPUs")[0])
