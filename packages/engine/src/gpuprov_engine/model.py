"""The Qwen2/Llama decoder forward, written over a Hugging Face model's weights, against a static
per-slot KV cache.

Cache layout: k and v are [layers, slots, kv_heads, max_len + 1, head_dim]. Position `max_len` of
every slot is a scratch column: decode rows that carry no sequence write their (ignored) K/V there, so
one captured CUDA graph serves any set of live slots. The cache starts zeroed, so attention never
reads a non-finite value from a position nothing wrote.

Two entry points:
- `prefill(chunks)`: eager; a batch of prompt chunks (slot, first position, token ids) of any lengths,
  written into the cache; returns the logits of the chunks' last tokens.
- `decode(B, T)`: one token for each of the rows 0..B-1 (row == slot), attending to the first T
  positions; reads `tokens`/`positions` from static buffers and writes static `logits`/`greedy`
  buffers, so it can be captured in a CUDA graph per (B, T) bucket.

Tensor parallelism (`tp_size` > 1, one process per rank in a torch.distributed group): each rank
holds its share of the attention heads (and their KV heads and cache) and of the MLP's
intermediate columns (Megatron's column/row split); the attention output and MLP projections are
summed across ranks (all-reduce); embeddings, norms and the LM head are whole on every rank, so
every rank computes the same logits. The ranks must make the same calls with the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


def tensor_parallel_degree(gpu_count: int, num_heads: int, num_kv_heads: int) -> int:
    """The largest power of two that is at most the GPU count and divides both the attention heads
    and the KV heads (the container runtime's rule, with KV heads split too)."""
    degree = 1
    while degree * 2 <= gpu_count and num_heads % (degree * 2) == 0 and num_kv_heads % (degree * 2) == 0:
        degree *= 2
    return degree


@dataclass
class Layer:
    ln1: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    o_w: torch.Tensor
    o_b: torch.Tensor | None
    ln2: torch.Tensor
    gate_up_w: torch.Tensor
    down_w: torch.Tensor


class Decoder:
    """Weights (q/k/v and gate/up fused), rotary tables, the KV cache and the decode buffers."""

    def __init__(self, hf_model, *, num_slots: int, max_len: int, device: torch.device, dtype: torch.dtype,
                 tp_rank: int = 0, tp_size: int = 1, tp_group=None):
        cfg = hf_model.config
        self.device, self.dtype = device, dtype
        self.hidden = cfg.hidden_size
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden // heads
        inter = cfg.intermediate_size
        if tp_size < 1 or heads % tp_size or kv % tp_size or inter % tp_size or not 0 <= tp_rank < tp_size:
            raise ValueError(f"tensor parallel size {tp_size} (rank {tp_rank}) must divide the model's {heads} "
                             f"attention heads, {kv} KV heads and {inter} MLP columns")
        self.tp_rank, self.tp_size, self.tp_group = tp_rank, tp_size, tp_group
        # This rank's heads (all of them without tensor parallelism).
        self.num_heads, self.num_kv = heads // tp_size, kv // tp_size
        self.group = self.num_heads // self.num_kv
        self.eps = cfg.rms_norm_eps
        self.vocab = cfg.vocab_size
        self.scale = self.head_dim ** -0.5
        self.num_slots, self.max_len = num_slots, max_len
        self.t_alloc = max_len + 1  # + the scratch column
        inner = hf_model.model

        def w(t):
            return t.detach().to(device=device, dtype=dtype).contiguous()

        r = tp_rank

        def rows(t):  # this rank's share of the output rows (q/k/v heads, the MLP's gate/up columns)
            step = t.shape[0] // tp_size
            return t[r * step:(r + 1) * step]

        def cols(t):  # this rank's share of the input columns (o_proj, down_proj)
            step = t.shape[1] // tp_size
            return t[:, r * step:(r + 1) * step]

        self.embed = w(inner.embed_tokens.weight)
        self.norm = w(inner.norm.weight)
        self.lm_head = w(hf_model.lm_head.weight)
        self.layers: list[Layer] = []
        for lyr in inner.layers:
            a, m = lyr.self_attn, lyr.mlp
            bias = a.q_proj.bias is not None
            self.layers.append(Layer(
                ln1=w(lyr.input_layernorm.weight),
                qkv_w=w(torch.cat([rows(a.q_proj.weight), rows(a.k_proj.weight), rows(a.v_proj.weight)])),
                qkv_b=w(torch.cat([rows(a.q_proj.bias), rows(a.k_proj.bias), rows(a.v_proj.bias)]))
                if bias else None,
                o_w=w(cols(a.o_proj.weight)),
                o_b=w(a.o_proj.bias) if a.o_proj.bias is not None else None,
                ln2=w(lyr.post_attention_layernorm.weight),
                gate_up_w=w(torch.cat([rows(m.gate_proj.weight), rows(m.up_proj.weight)])),
                down_w=w(cols(m.down_proj.weight)),
            ))
        self.inter = self.layers[0].gate_up_w.shape[0] // 2

        # Rotary tables from the model's own rotary module (rope scaling and attention scaling included).
        rot = inner.rotary_emb
        src = inner.embed_tokens.weight.device
        with torch.no_grad():
            pos = torch.arange(self.t_alloc, device=src)[None]
            cos, sin = rot(torch.zeros(1, device=src, dtype=torch.float32), pos)
        self.cos = cos[0].to(device=device, dtype=dtype).contiguous()  # [T, D]
        self.sin = sin[0].to(device=device, dtype=dtype).contiguous()

        shape = (len(self.layers), num_slots, self.num_kv, self.t_alloc, self.head_dim)
        self.k_cache = torch.zeros(shape, device=device, dtype=dtype)
        self.v_cache = torch.zeros(shape, device=device, dtype=dtype)

        # Static decode buffers (row b is slot b).
        self.tokens = torch.zeros(num_slots, dtype=torch.long, device=device)
        self.positions = torch.full((num_slots,), max_len, dtype=torch.long, device=device)
        self.logits = torch.zeros(num_slots, self.vocab, dtype=dtype, device=device)
        self.greedy = torch.zeros(num_slots, dtype=torch.long, device=device)
        self.rows = torch.arange(num_slots, device=device)
        self.kv_heads = torch.arange(self.num_kv, device=device)

    @staticmethod
    def kv_bytes_per_slot(cfg, max_len: int, dtype: torch.dtype) -> int:
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        elem = torch.empty(0, dtype=dtype).element_size()
        return 2 * cfg.num_hidden_layers * kv * (max_len + 1) * head_dim * elem

    # -- pieces -----------------------------------------------------------------------------------
    def _rms(self, x, weight):
        return F.rms_norm(x, (self.hidden,), weight, self.eps)

    def _rope(self, x, cos, sin):
        """x [..., n, D]; cos/sin broadcastable [..., 1, D] (rotate_half convention, as HF)."""
        half = self.head_dim // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rot * sin

    def _reduce(self, t):
        """The sum of every rank's partial projection (nothing to do on one rank)."""
        if self.tp_size > 1:
            dist.all_reduce(t, group=self.tp_group)
        return t

    def _out(self, att, layer):
        """o_proj: each rank's heads' share summed across ranks, the bias added once."""
        y = self._reduce(F.linear(att, layer.o_w))
        return y + layer.o_b if layer.o_b is not None else y

    def _mlp(self, x, layer):
        gu = F.linear(x, layer.gate_up_w)
        g, u = gu.split(self.inter, dim=-1)
        return self._reduce(F.linear(F.silu(g) * u, layer.down_w))

    # -- decode (graph-capturable) -----------------------------------------------------------------
    def decode(self, B: int, T: int) -> None:
        """One step for rows 0..B-1: tokens[:B] at positions[:B] -> logits[:B], greedy[:B]."""
        H, KV, D = self.num_heads, self.num_kv, self.head_dim
        tok, pos = self.tokens[:B], self.positions[:B]
        rows = self.rows[:B]
        # Flat row index of (slot b, kv head h, position pos[b]) in one layer's cache viewed [-1, D].
        widx = ((rows[:, None] * KV + self.kv_heads[None, :]) * self.t_alloc + pos[:, None]).reshape(-1)
        x = F.embedding(tok, self.embed)  # [B, hidden]
        cos = self.cos[pos][:, None, :]  # [B, 1, D]
        sin = self.sin[pos][:, None, :]
        mask = (torch.arange(T, device=self.device)[None, :] <= pos[:, None])[:, None, None, :]  # [B,1,1,T]
        for li, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln1)
            qkv = F.linear(h, layer.qkv_w, layer.qkv_b)
            qk = self._rope(qkv[:, : (H + KV) * D].view(B, H + KV, D), cos, sin)
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[:, (H + KV) * D:].view(B, KV, D)
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc.view(-1, D).index_copy_(0, widx, k.reshape(B * KV, D))
            vc.view(-1, D).index_copy_(0, widx, v.reshape(B * KV, D))
            keys = kc[:B, :, :T]  # [B, KV, T, D]
            vals = vc[:B, :, :T]
            qg = q.reshape(B, KV, self.group, D)
            scores = torch.matmul(qg, keys.transpose(-1, -2)) * self.scale  # [B, KV, G, T]
            scores = scores.masked_fill(~mask, float("-inf"))
            p = torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.dtype)
            att = torch.matmul(p, vals).reshape(B, H * D)
            x = x + self._out(att, layer)
            x = x + self._mlp(self._rms(x, layer.ln2), layer)
        logits = F.linear(self._rms(x, self.norm), self.lm_head)
        self.logits[:B].copy_(logits)
        self.greedy[:B].copy_(logits.argmax(dim=-1))

    # -- prefill (eager) ---------------------------------------------------------------------------
    def prefill(self, chunks: list[tuple[int, int, list[int]]]) -> torch.Tensor:
        """chunks: (slot, start position, token ids). Writes their K/V; returns [N, vocab] logits of
        each chunk's last token."""
        H, KV, D, dev = self.num_heads, self.num_kv, self.head_dim, self.device
        N = len(chunks)
        Lc = max(len(c[2]) for c in chunks)
        ids = torch.zeros(N, Lc, dtype=torch.long)
        lens = torch.tensor([len(c[2]) for c in chunks])
        starts = torch.tensor([c[1] for c in chunks])
        for i, (_, _, toks) in enumerate(chunks):
            ids[i, : len(toks)] = torch.tensor(toks)
        ids = ids.to(dev)
        slots = torch.tensor([c[0] for c in chunks], device=dev)
        offs = torch.arange(Lc)
        pos_cpu = starts[:, None] + offs[None, :]  # [N, Lc]
        valid_cpu = offs[None, :] < lens[:, None]
        pos = pos_cpu.clamp(max=self.max_len).to(dev)
        Tk = int((starts + lens).max())
        # Valid tokens' (slot, position) for the cache writes.
        vi = valid_cpu.nonzero(as_tuple=True)
        w_slot = slots[vi[0].to(dev)]
        w_pos = pos_cpu[vi].to(dev)
        vi_dev = (vi[0].to(dev), vi[1].to(dev))
        widx = ((w_slot[:, None] * KV + self.kv_heads[None, :]) * self.t_alloc + w_pos[:, None]).reshape(-1)
        causal = bool((starts == 0).all()) and Tk == Lc
        mask = None
        if not causal:
            keypos = torch.arange(Tk, device=dev)
            mask = (keypos[None, None, :] <= pos[:, :, None])[:, None]  # [N, 1, Lc, Tk]
        cos = self.cos[pos][:, :, None, :]  # [N, Lc, 1, D]
        sin = self.sin[pos][:, :, None, :]
        x = F.embedding(ids, self.embed)  # [N, Lc, hidden]
        for li, layer in enumerate(self.layers):
            h = self._rms(x, layer.ln1)
            qkv = F.linear(h, layer.qkv_w, layer.qkv_b)
            qk = self._rope(qkv[..., : (H + KV) * D].view(N, Lc, H + KV, D), cos, sin)
            q, k = qk[:, :, :H], qk[:, :, H:]
            v = qkv[..., (H + KV) * D:].view(N, Lc, KV, D)
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc.view(-1, D).index_copy_(0, widx, k[vi_dev].reshape(-1, D))
            vc.view(-1, D).index_copy_(0, widx, v[vi_dev].reshape(-1, D))
            keys = kc[slots, :, :Tk]  # [N, KV, Tk, D]
            vals = vc[slots, :, :Tk]
            if self.group > 1:
                keys = keys.repeat_interleave(self.group, dim=1)
                vals = vals.repeat_interleave(self.group, dim=1)
            if causal:  # every chunk starts at 0: the causal mask is exact for the valid queries
                att = F.scaled_dot_product_attention(q.transpose(1, 2), keys, vals, is_causal=True, scale=self.scale)
            else:
                att = F.scaled_dot_product_attention(q.transpose(1, 2), keys, vals, attn_mask=mask, scale=self.scale)
            att = att.transpose(1, 2).reshape(N, Lc, H * D)
            x = x + self._out(att, layer)
            x = x + self._mlp(self._rms(x, layer.ln2), layer)
        last = x[torch.arange(N, device=dev), (lens - 1).to(dev)]  # [N, hidden]
        return F.linear(self._rms(last, self.norm), self.lm_head)
