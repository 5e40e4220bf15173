"""Build a random-weight model with DeepSeek-R1-Distill-Qwen-1.5B's shape (Qwen2: hidden 1536,
28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936) on the GPU in bf16, save it with
save_pretrained, and copy the tiny-deepseek tokenizer beside it (its ids are < 1024, valid here).

With --fill-vocab the tokenizer gets an added token for every id it lacks up to the model's vocabulary
(`<|t123|>`), so that every id the random model generates decodes to text: a client then sees each
token as it comes (without it most ids decode to nothing and a stream sends text only at the end).

usage: python3 benchmarks/make_model.py [--out /tmp/ds15] [--tokenizer DIR] [--fill-vocab]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

HERE = Path(__file__).resolve().parent
TINY = HERE.parents[2] / "roles" / "models" / "files" / "tiny-deepseek"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/ds15")
    ap.add_argument("--tokenizer", default=str(TINY))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fill-vocab", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    cfg = Qwen2Config(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072, rope_theta=10000.0,
        rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False, use_sliding_window=False,
        sliding_window=4096, max_window_layers=21, bos_token_id=0, eos_token_id=1,  # the tiny tokenizer's
    )
    torch.manual_seed(0)
    with torch.device(a.device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    out = Path(a.out)
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(a.tokenizer) / f, out / f)
    if a.fill_vocab:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
        have = tok.get_vocab_size(with_added_tokens=True)
        tok.add_tokens([f"<|t{i}|>" for i in range(have, cfg.vocab_size)])
        tok.save(str(out / "tokenizer.json"))
        print(f"tokenizer: {have} -> {tok.get_vocab_size(with_added_tokens=True)} ids")
    print(f"made {out}: {n / 1e9:.3f}B parameters, bf16, on {a.device}, in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
