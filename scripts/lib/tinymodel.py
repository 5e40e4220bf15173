"""Generate `tiny-deepseek`: the DeepSeek-R1-Distill-Qwen architecture (Qwen2ForCausalLM) with tiny
dimensions and fixed-seed random weights, a byte-level BPE tokenizer trained on a fixed corpus (the
project's seed article), DeepSeek-R1's special tokens and a DeepSeek-style chat template. The same
inputs and the pinned library versions give byte-identical files (tests check it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
PAD = "<｜▁pad▁｜>"
SPECIAL = [BOS, EOS, USER, ASSISTANT, PAD, "<think>", "</think>"]
VOCAB = 1024
SEED = 20250120  # DeepSeek-R1's release date

# DeepSeek-R1-Distill's template, reduced to what a chat server needs: system text first, user and
# assistant turns with DeepSeek's markers, and a generation prompt that opens the <think> block.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '" + USER + "' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '" + ASSISTANT + "' + message['content'] + '" + EOS + "' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "<think>\\n' }}{% endif %}"
)

# The dimensions the weights are drawn with; CONFIG (config.json) carries them.
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 64, 176, 2, 4, 2
INITIALIZER_RANGE = 0.02

CONFIG: dict[str, object] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "max_position_embeddings": 4096,
    "max_window_layers": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "initializer_range": INITIALIZER_RANGE,
    "sliding_window": 4096,
    "use_sliding_window": False,
    "use_cache": True,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}


def train_tokenizer(corpus: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(corpus)], trainer)
    return tok


def weights(vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    h, inter = HIDDEN, INTERMEDIATE
    head = h // HEADS
    kv = head * KV_HEADS

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * INITIALIZER_RANGE).astype(np.float32)

    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(vocab, h)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = normal(h, h)
        t[p + "self_attn.q_proj.bias"] = np.zeros(h, np.float32)
        t[p + "self_attn.k_proj.weight"] = normal(kv, h)
        t[p + "self_attn.k_proj.bias"] = np.zeros(kv, np.float32)
        t[p + "self_attn.v_proj.weight"] = normal(kv, h)
        t[p + "self_attn.v_proj.bias"] = np.zeros(kv, np.float32)
        t[p + "self_attn.o_proj.weight"] = normal(h, h)
        t[p + "mlp.gate_proj.weight"] = normal(inter, h)
        t[p + "mlp.up_proj.weight"] = normal(inter, h)
        t[p + "mlp.down_proj.weight"] = normal(h, inter)
        t[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
    t["model.norm.weight"] = np.ones(h, np.float32)
    t["lm_head.weight"] = normal(vocab, h)
    return t


def _json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def generate(corpus: Path, out: Path) -> dict:
    """Write the model into `out` (created) and return its manifest (also written as manifest.json)."""
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(corpus)
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    _json(out / "config.json", {**CONFIG, "vocab_size": vocab, "bos_token_id": ids[BOS], "eos_token_id": ids[EOS]})
    _json(out / "generation_config.json", {
        "bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "do_sample": True,
        "temperature": 0.6, "top_p": 0.95,  # DeepSeek's recommended sampling for R1 models
    })
    _json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": CONFIG["max_position_embeddings"], "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {str(ids[t]): {"content": t, "special": t not in ("<think>", "</think>"),
                                               "lstrip": False, "rstrip": False, "normalized": False,
                                               "single_word": False} for t in SPECIAL},
    })
    save_file(weights(vocab), str(out / "model.safetensors"), metadata={"format": "pt"})
    files = []
    for f in sorted(out.iterdir()):
        if f.name == "manifest.json":
            continue
        data = f.read_bytes()
        files.append({"path": f.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    digest = hashlib.sha256("".join(f"{f['path']} {f['sha256']}\n" for f in files).encode()).hexdigest()
    manifest = {"name": "tiny-deepseek", "revision": digest[:12], "files": files}
    _json(out / "manifest.json", manifest)
    return manifest


if __name__ == "__main__":
    import sys

    m = generate(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"tiny-deepseek revision {m['revision']}: " + ", ".join(f"{f['path']} ({f['size']} B)" for f in m["files"]))
