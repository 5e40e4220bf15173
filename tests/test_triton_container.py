"""The triton role's `container` runtime (NGC trtllm image, TensorRT-LLM's LLM API) as the role
renders it for GPU hosts described by the gpu fact: tensor parallelism from the GPU count and the
checkpoint's attention heads, FP8 from the compute capability, and the unit and model repository.

No NGC image can be pulled here and no GPU host has Docker, so these tests run the role's real
settings tasks (tasks/container_settings.yml) and its real templates through gpuprov's runner on
localhost, over the recorded H200 fact and GPU shapes of common servers. What only a GPU host
checks is in roles/triton/README.md."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import pytest
import yaml
from conftest import write_local_inventory

from gpuprov.runner import RunRequest, run

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "roles/triton/templates"
H200 = json.loads((ROOT / "tests/fixtures/gpu/h200-x1.expected.json").read_text())

# Attention heads (and FP8) as in the checkpoints' config.json.
QWEN_32B = {"architectures": ["Qwen2ForCausalLM"], "num_attention_heads": 40, "num_key_value_heads": 8}
LLAMA_70B = {"architectures": ["LlamaForCausalLM"], "num_attention_heads": 64, "num_key_value_heads": 8}
QWEN_7B = {"architectures": ["Qwen2ForCausalLM"], "num_attention_heads": 28, "num_key_value_heads": 4}
DEEPSEEK_V3 = {"architectures": ["DeepseekV3ForCausalLM"], "num_attention_heads": 128,
               "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}


def _gpus(count: int, name: str, cc: str, mib: int) -> dict:
    gpu = {"name": name, "compute_capability": cc, "memory_total_mib": mib}
    return {"status": "ok", "gpu_count": count, "gpus": [gpu] * count}


def _render(tmp_path: Path, gpu: dict, checkpoint: dict, **extra) -> tuple[int, list[dict], Path]:
    model = tmp_path / "models/deepseek/current"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(checkpoint))
    out = tmp_path / "out"
    out.mkdir()
    render = [{"name": f"Render {name}",
               "ansible.builtin.template": {"src": str(TEMPLATES / src), "dest": str(out / name), "mode": "0644"}}
              for name, src in [("model.yaml", "model.yaml.j2"), ("config.pbtxt", "config.pbtxt.j2"),
                                ("gpuprov-triton.service", "gpuprov-triton-container.service.j2")]]
    play = [{"name": "Render the container runtime", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Work out the container's settings",
         "ansible.builtin.include_role": {"name": "triton", "tasks_from": "container_settings", "public": True}},
        {"name": "Find the IDs the container runs as",
         "ansible.builtin.include_role": {"name": "triton", "tasks_from": "container_user", "public": True}},
        *render,
    ]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    write_local_inventory(tmp_path / "hosts.yml", group="gpu_servers")
    events: list[dict] = []
    # The service user: one every Debian host has (nobody, 65534:65534), as the role would create triton.
    variables = {"ansible_local": {"gpu": gpu}, "triton_runtime": "container", "triton_model_path": str(model),
                 "triton_user": "nobody", **extra}
    result = run(RunRequest(command="test-triton-container", playbook=str(tmp_path / "play.yml"),
                            inventories=[str(tmp_path / "hosts.yml")], extra_vars=[json.dumps(variables)]),
                 on_event=lambda _t, e: events.append(e))
    return result.rc, events, out


def _failure(events: list[dict]) -> tuple[str, str]:
    failed = [e["event_data"] for e in events if e.get("event") == "runner_on_failed"]
    assert len(failed) == 1, failed
    return failed[0]["task"], str(failed[0]["res"].get("msg"))


@pytest.mark.parametrize("gpu, checkpoint, tp, kv_dtype", [
    (H200, QWEN_32B, 1, "fp8"),                                      # the recorded H200 (Hopper, 9.0)
    (_gpus(8, "NVIDIA H100 80GB HBM3", "9.0", 81559), LLAMA_70B, 8, "fp8"),
    (_gpus(8, "NVIDIA H200", "9.0", 143771), DEEPSEEK_V3, 8, "fp8"),   # FP8 checkpoint on Hopper
    (_gpus(4, "NVIDIA A100-SXM4-80GB", "8.0", 81920), QWEN_32B, 4, "auto"),  # Ampere: bf16
    (_gpus(6, "NVIDIA L40S", "8.9", 46068), QWEN_32B, 4, "fp8"),     # 6 GPUs: TP 4 (power of two, 40 % 4 == 0)
    (_gpus(3, "NVIDIA A10", "8.6", 23028), QWEN_7B, 2, "auto"),      # 3 GPUs, 28 heads: TP 2
])
def test_tensor_parallelism_and_precision_from_the_gpus(tmp_path, gpu, checkpoint, tp, kv_dtype):
    rc, events, out = _render(tmp_path, gpu, checkpoint)
    assert rc == 0, [e["event_data"].get("res") for e in events if e.get("event") == "runner_on_failed"]
    settings = yaml.safe_load((out / "model.yaml").read_text())
    assert settings["model"] == str(tmp_path / "models/deepseek/current")
    assert settings["backend"] == "pytorch"
    assert settings["tensor_parallel_size"] == tp
    assert settings["pipeline_parallel_size"] == 1
    assert settings["dtype"] == "bfloat16"
    assert settings["max_batch_size"] == 16  # the seed's batch size
    assert settings["kv_cache_config"] == {"free_gpu_memory_fraction": 0.9, "dtype": kv_dtype}


def test_model_repository_answers_like_the_native_one(tmp_path):
    rc, _, out = _render(tmp_path, H200, QWEN_32B)
    assert rc == 0
    config = (out / "config.pbtxt").read_text()
    assert 'backend: "python"' in config
    assert 'parameters { key: "engine" value: { string_value: "llmapi" } }' in config
    assert "max_batch_size: 16" in config and "decoupled: true" in config
    assert "max_queue_size: 64" in config
    for name in ("text_input", "max_tokens", "temperature", "top_p", "top_k", "stop_words", "stream", "text_output"):
        assert f'name: "{name}"' in config
    assert "kind: KIND_CPU" in config  # TensorRT-LLM places the model on the GPUs itself


def test_unit_runs_the_pinned_image_with_gpus_and_loopback_ports(tmp_path):
    rc, _, out = _render(tmp_path, H200, QWEN_32B, triton_container_registry="registry.lab.example:5000",
                         triton_container_digest="sha256:" + "ab" * 32)
    assert rc == 0
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(out / "gpuprov-triton.service")
    start = " ".join(unit["Service"]["ExecStart"].replace("\\\n", " ").split())
    image = "registry.lab.example:5000/nvidia/tritonserver:26.03-trtllm-python-py3@sha256:" + "ab" * 32
    assert f" {image} tritonserver " in start
    for flag in ("--runtime=nvidia --gpus all", "--network host", "--shm-size 16g", "--ulimit memlock=-1",
                 "--cap-drop ALL", "--http-address=127.0.0.1 --http-port=8000",
                 # Never root, a read-only image with a tmpfs HOME, a cap on processes and threads.
                 "--user 65534:65534", "--read-only --tmpfs /tmp:rw,nosuid,nodev,size=8g", "--pids-limit 8192",
                 "--env HOME=/tmp",
                 "--grpc-address=127.0.0.1 --grpc-port=8001", "--model-control-mode=none"):
        assert flag in start, flag
    models = tmp_path / "models/deepseek"
    assert f"--volume {models}:{models}:ro" in start
    assert "--volume /var/lib/gpuprov/triton/models:/var/lib/gpuprov/triton/models:ro" in start
    assert unit["Unit"]["Requires"] == "docker.service"
    assert unit["Service"]["Restart"] == "on-failure"
    # Triton's administrative APIs need the root-only key, which the unit reads from its file.
    apis = "logging,trace,model-repository,model-config,shared-memory,statistics"
    assert f"--http-restricted-api={apis}:gpuprov-admin=${{TRITON_ADMIN_KEY}}" in start
    assert f"--grpc-restricted-protocol={apis}:gpuprov-admin=${{TRITON_ADMIN_KEY}}" in start
    assert unit["Service"]["EnvironmentFile"] == "/etc/gpuprov/triton-admin.env"


@pytest.mark.parametrize("gpu, checkpoint, extra, words", [
    ({"status": "no_gpu", "gpu_count": 0, "gpus": []}, QWEN_32B, {}, "needs NVIDIA GPUs, and the gpu fact shows none"),
    (_gpus(8, "NVIDIA A100-SXM4-80GB", "8.0", 81920), DEEPSEEK_V3, {},
     "a checkpoint published in FP8 (True here) cannot be served in bf16"),
    (_gpus(4, "NVIDIA H100 80GB HBM3", "9.0", 81559), LLAMA_70B, {"triton_tensor_parallel_size": 8},
     "Tensor parallelism 8 must be at most the GPU count (4)"),
    (_gpus(2, "NVIDIA A100-SXM4-80GB", "8.0", 81920), QWEN_32B, {"triton_precision": "fp8"},
     "needs compute capability 8.9 or newer for fp8 (the GPUs have 8.0)"),
])
def test_settings_the_gpus_cannot_run_are_refused(tmp_path, gpu, checkpoint, extra, words):
    rc, events, out = _render(tmp_path, gpu, checkpoint, **extra)
    assert rc != 0
    task, msg = _failure(events)
    assert task.startswith("Check "), task
    assert words in msg, msg
    assert list(out.iterdir()) == []  # nothing rendered
