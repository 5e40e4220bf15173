"""Build a random-weight model with DeepSeek-R1-Distill-Qwen-1.5B's shape (Qwen2: hidden 1536,
28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936) on the GPU in bf16, save it with
save_pretrained, and copy the tiny-deepseek tokenizer beside it (its ids are < 1024, valid here).

Text ids: the tokenizer, loaded the way the Triton adapter loads it (`AutoTokenizer` over the model
folder), decodes only ~1,000 of the 151,936 ids; the rest decode to nothing, and a random model's
greedy ids are almost all there, so a stream would carry no text until its end. The lm_head rows of
every id that does not decode on its own to at least `--min-chars` characters of complete text (no
special ids, no broken UTF-8) are set to zero: their logits are exactly 0, the kept ids' are random
(std ~0.8), so greedy argmax lands on a kept id and each token adds its own piece of text. The shape,
the dtype and the compute (a full 151,936-wide lm_head) are unchanged. `--all-ids` keeps every row.

Why `--fill-vocab` (added tokens `<|t123|>` in tokenizer.json, runs 3-4) gave no text: with the
model's config.json beside it, transformers 5 loads this tokenizer as `Qwen2Tokenizer`, which rebuilds
it from tokenizer.json's BPE vocab and merges plus tokenizer_config.json's `added_tokens_decoder`;
the 150,912 added tokens are dropped (1,025 ids), so those ids still decode to "".

usage: python3 benchmarks/make_model.py [--out /tmp/ds15] [--tokenizer DIR] [--min-chars 2] [--all-ids]
       [--layers 28 --hidden 1536 --intermediate 8960 --heads 12]  (smaller values: CPU checks only)
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

HERE = Path(__file__).resolve().parent
TINY = HERE.parents[2] / "roles" / "models" / "files" / "tiny-deepseek"


def make_config(a: argparse.Namespace) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=151936, hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, num_key_value_heads=2, max_position_embeddings=131072, rope_theta=10000.0,
        rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False, use_sliding_window=False,
        sliding_window=4096, max_window_layers=21, bos_token_id=0, eos_token_id=1,  # the tiny tokenizer's
    )


def text_ids(tok, vocab_size: int, min_chars: int) -> list[int]:
    """Ids that decode alone to at least min_chars characters of complete, non-special text."""
    special = set(tok.all_special_ids)
    ids = []
    for i in range(min(len(tok), vocab_size)):
        if i in special:
            continue
        s = tok.decode([i], skip_special_tokens=True)
        if len(s) >= min_chars and "\ufffd" not in s:
            ids.append(i)
    return ids


@torch.no_grad()
def keep_rows(model, ids: list[int]) -> None:
    """Zero the lm_head rows of every id not in ids (their logits become exactly 0)."""
    w = model.get_output_embeddings().weight
    keep = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)
    keep[torch.tensor(ids, device=w.device)] = True
    w[~keep] = 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/ds15")
    ap.add_argument("--tokenizer", default=str(TINY))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--min-chars", type=int, default=2)
    ap.add_argument("--all-ids", action="store_true", help="keep every lm_head row (most ids give no text)")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--intermediate", type=int, default=8960)
    ap.add_argument("--heads", type=int, default=12)
    a = ap.parse_args()
    t0 = time.perf_counter()
    cfg = make_config(a)
    out = Path(a.out)
    cfg.save_pretrained(out)  # the tokenizer class transformers picks depends on config.json
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(a.tokenizer) / f, out / f)
    torch.manual_seed(0)
    with torch.device(a.device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    if not a.all_ids:
        tok = AutoTokenizer.from_pretrained(out)
        ids = text_ids(tok, cfg.vocab_size, a.min_chars)
        keep_rows(model, ids)
        print(f"tokenizer {type(tok).__name__}: {len(tok)} ids; lm_head keeps {len(ids)} rows that decode to "
              f">= {a.min_chars} chars, {cfg.vocab_size - len(ids)} rows zeroed")
    model.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"made {out}: {n / 1e9:.3f}B parameters, bf16, on {a.device}, in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
