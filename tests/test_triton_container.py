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
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import failed_tasks_of, run_local_cases

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


# Every case is a host of one run (the role's tasks per host, Ansible's start-up once): its name
# -> (gpu fact, checkpoint, extra variables).
CASES: dict[str, tuple[dict, dict, dict]] = {
    # The recorded H200 (Hopper, 9.0).
    "h200": (H200, QWEN_32B, {}),
    "h100x8-llama70b": (_gpus(8, "NVIDIA H100 80GB HBM3", "9.0", 81559), LLAMA_70B, {}),
    # An FP8 checkpoint on Hopper.
    "h200x8-deepseek-v3": (_gpus(8, "NVIDIA H200", "9.0", 143771), DEEPSEEK_V3, {}),
    # Ampere: bf16.
    "a100x4": (_gpus(4, "NVIDIA A100-SXM4-80GB", "8.0", 81920), QWEN_32B, {}),
    # 6 GPUs: TP 4 (a power of two, 40 % 4 == 0).
    "l40sx6": (_gpus(6, "NVIDIA L40S", "8.9", 46068), QWEN_32B, {}),
    # 3 GPUs, 28 heads: TP 2.
    "a10x3-qwen7b": (_gpus(3, "NVIDIA A10", "8.6", 23028), QWEN_7B, {}),
    "h200-registry": (H200, QWEN_32B, {"triton_container_registry": "registry.lab.example:5000",
                                       "triton_container_digest": "sha256:" + "ab" * 32}),
    "refused-no-gpu": ({"status": "no_gpu", "gpu_count": 0, "gpus": []}, QWEN_32B, {}),
    "refused-fp8-checkpoint": (_gpus(8, "NVIDIA A100-SXM4-80GB", "8.0", 81920), DEEPSEEK_V3, {}),
    "refused-tp": (_gpus(4, "NVIDIA H100 80GB HBM3", "9.0", 81559), LLAMA_70B, {"triton_tensor_parallel_size": 8}),
    "refused-fp8": (_gpus(2, "NVIDIA A100-SXM4-80GB", "8.0", 81920), QWEN_32B, {"triton_precision": "fp8"}),
}


@dataclass
class Rendered:
    model: Path
    out: Path
    failed: list[dict]  # this host's failed tasks (event data)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Rendered]:
    """Every case rendered by the role's settings tasks and its templates in one run on localhost
    (one host per case, each with its own gpu fact, checkpoint and output directory)."""
    base = tmp_path_factory.mktemp("triton-container")
    hosts, cases = {}, {}
    for name, (gpu, checkpoint, extra) in CASES.items():
        model = base / name / "models/deepseek/current"
        model.mkdir(parents=True)
        (model / "config.json").write_text(json.dumps(checkpoint))
        out = base / name / "out"
        out.mkdir()
        cases[name] = Rendered(model, out, [])
        # The service user: one every Debian host has (nobody, 65534:65534), as the role would create triton.
        hosts[name] = {"gpuprov_test_local": {"gpu": gpu}, "triton_runtime": "container",
                       "triton_model_path": str(model), "triton_user": "nobody", "gpuprov_test_out": str(out),
                       **extra}
    render = [{"name": f"Render {name}",
               "ansible.builtin.template": {"src": str(TEMPLATES / src), "dest": f"{{{{ gpuprov_test_out }}}}/{name}",
                                            "mode": "0644"}}
              for name, src in [("model.yaml", "model.yaml.j2"), ("config.pbtxt", "config.pbtxt.j2"),
                                ("gpuprov-triton.service", "gpuprov-triton-container.service.j2")]]
    events = run_local_cases(base, "test-triton-container", hosts, [
        {"name": "Work out the container's settings",
         "ansible.builtin.include_role": {"name": "triton", "tasks_from": "container_settings", "public": True}},
        {"name": "Find the IDs the container runs as",
         "ansible.builtin.include_role": {"name": "triton", "tasks_from": "container_user", "public": True}},
        *render,
    ])
    for name, case in cases.items():
        case.failed = failed_tasks_of(events[name])
        # Every case ran to its end: rendered or refused.
        assert case.failed or (case.out / "gpuprov-triton.service").exists(), name
    return cases


@pytest.mark.parametrize("case, tp, kv_dtype", [
    ("h200", 1, "fp8"), ("h100x8-llama70b", 8, "fp8"), ("h200x8-deepseek-v3", 8, "fp8"), ("a100x4", 4, "auto"),
    ("l40sx6", 4, "fp8"), ("a10x3-qwen7b", 2, "auto"),
])
def test_tensor_parallelism_and_precision_from_the_gpus(rendered, case, tp, kv_dtype):
    r = rendered[case]
    assert not r.failed, [f.get("res") for f in r.failed]
    settings = yaml.safe_load((r.out / "model.yaml").read_text())
    assert settings["model"] == str(r.model.parent / "current")
    assert settings["backend"] == "pytorch"
    assert settings["tensor_parallel_size"] == tp
    assert settings["pipeline_parallel_size"] == 1
    assert settings["dtype"] == "bfloat16"
    assert settings["max_batch_size"] == 16  # the seed's batch size
    assert settings["kv_cache_config"] == {"free_gpu_memory_fraction": 0.9, "dtype": kv_dtype}


def test_model_repository_answers_like_the_native_one(rendered):
    r = rendered["h200"]
    assert not r.failed
    config = (r.out / "config.pbtxt").read_text()
    assert 'backend: "python"' in config
    assert 'parameters { key: "engine" value: { string_value: "llmapi" } }' in config
    assert "max_batch_size: 16" in config and "decoupled: true" in config
    assert "max_queue_size: 64" in config
    for name in ("text_input", "max_tokens", "temperature", "top_p", "top_k", "stop_words", "stream", "text_output"):
        assert f'name: "{name}"' in config
    assert "kind: KIND_CPU" in config  # TensorRT-LLM places the model on the GPUs itself


def test_unit_runs_the_pinned_image_with_gpus_and_loopback_ports(rendered):
    r = rendered["h200-registry"]
    assert not r.failed
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(r.out / "gpuprov-triton.service")
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
    models = r.model.parent
    assert f"--volume {models}:{models}:ro" in start
    assert "--volume /var/lib/gpuprov/triton/models:/var/lib/gpuprov/triton/models:ro" in start
    assert unit["Unit"]["Requires"] == "docker.service"
    assert unit["Service"]["Restart"] == "on-failure"
    # Triton's administrative APIs need the root-only key, which the unit reads from its file.
    apis = "logging,trace,model-repository,model-config,shared-memory,statistics"
    assert f"--http-restricted-api={apis}:gpuprov-admin=${{TRITON_ADMIN_KEY}}" in start
    assert f"--grpc-restricted-protocol={apis}:gpuprov-admin=${{TRITON_ADMIN_KEY}}" in start
    assert unit["Service"]["EnvironmentFile"] == "/etc/gpuprov/triton-admin.env"


@pytest.mark.parametrize("case, words", [
    ("refused-no-gpu", "needs NVIDIA GPUs, and the gpu fact shows none"),
    ("refused-fp8-checkpoint", "a checkpoint published in FP8 (True here) cannot be served in bf16"),
    ("refused-tp", "Tensor parallelism 8 must be at most the GPU count (4)"),
    ("refused-fp8", "needs compute capability 8.9 or newer for fp8 (the GPUs have 8.0)"),
])
def test_settings_the_gpus_cannot_run_are_refused(rendered, case, words):
    r = rendered[case]
    assert len(r.failed) == 1, r.failed
    task, msg = r.failed[0]["task"], str(r.failed[0]["res"].get("msg"))
    assert task.startswith("Check "), task
    assert words in msg, msg
    assert list(r.out.iterdir()) == []  # nothing rendered
