"""tiny-deepseek is reproducible byte for byte from the repository, has the Qwen2 (DeepSeek-R1-Distill-Qwen)
tensor layout its config names, a tokenizer that round-trips text and knows DeepSeek's special tokens,
and a chat template that renders DeepSeek's turn markers."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
from conftest import load_module
from safetensors.numpy import load_file
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
# Test tooling, not part of the gpuprov package: scripts/lib/tinymodel.py (scripts/make-tiny-deepseek).
tinymodel = load_module("tinymodel", "scripts/lib/tinymodel.py")
SHIPPED = ROOT / "roles/models/files/tiny-deepseek"
CORPUS = ROOT / "scripts/data/tiny-deepseek-corpus.txt"


def test_regenerates_byte_for_byte(tmp_path):
    manifest = tinymodel.generate(CORPUS, tmp_path / "m")
    shipped = json.loads((SHIPPED / "manifest.json").read_text())
    assert manifest == shipped
    for f in shipped["files"]:
        assert (tmp_path / "m" / f["path"]).read_bytes() == (SHIPPED / f["path"]).read_bytes(), f["path"]


def test_tensor_layout_matches_config():
    cfg = json.loads((SHIPPED / "config.json").read_text())
    t = load_file(str(SHIPPED / "model.safetensors"))
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert t["model.embed_tokens.weight"].shape == (v, h)
    assert t["lm_head.weight"].shape == (v, h)
    for i in range(cfg["num_hidden_layers"]):
        assert t[f"model.layers.{i}.self_attn.k_proj.weight"].shape == (kv, h)
        assert t[f"model.layers.{i}.mlp.down_proj.weight"].shape == (h, cfg["intermediate_size"])
    assert len(t) == 2 + 1 + 12 * cfg["num_hidden_layers"]


def test_tokenizer_round_trips_and_knows_deepseek_tokens():
    tok = Tokenizer.from_file(str(SHIPPED / "tokenizer.json"))
    text = "Local DeepSeek inference: batch size 16, TLS 1.3. 本地部署DeepSeek"
    assert tok.decode(tok.encode(text).ids) == text
    cfg = json.loads((SHIPPED / "config.json").read_text())
    assert tok.token_to_id(tinymodel.EOS) == cfg["eos_token_id"]
    assert tok.encode(tinymodel.USER + "hi").ids[0] == tok.token_to_id(tinymodel.USER)


def test_chat_template_renders_deepseek_turns():
    tc = json.loads((SHIPPED / "tokenizer_config.json").read_text())
    out = jinja2.Environment().from_string(tc["chat_template"]).render(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Why?"}],
        bos_token=tc["bos_token"], add_generation_prompt=True)
    assert out == ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜>"
                   "<｜User｜>Why?<｜Assistant｜><think>\n")
