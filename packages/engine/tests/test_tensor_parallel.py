"""Tensor parallelism on CPU: two processes (torch.distributed, gloo) each holding half of the
tiny model's heads and MLP columns give, token for token, the greedy output of one process holding
all of it; the degree is chosen from GPU counts as the container runtime chooses it."""

from __future__ import annotations

import queue
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from gpuprov_engine import Engine
from gpuprov_engine.lockstep import follow
from gpuprov_engine.model import Decoder, tensor_parallel_degree

TINY = Path(__file__).resolve().parents[3] / "roles" / "models" / "files" / "tiny-deepseek"
PROMPTS = [[7, 81, 300, 12, 5, 900, 44], [3, 1000, 250, 16, 77, 8, 420, 610, 9, 33, 2]]
NEW = 16


@pytest.mark.parametrize("gpus, heads, kv, degree", [
    (1, 12, 2, 1), (2, 12, 2, 2), (4, 12, 2, 2), (8, 12, 2, 2),   # R1-Distill-Qwen-1.5B's shape
    (1, 40, 8, 1), (2, 40, 8, 2), (4, 40, 8, 4), (8, 40, 8, 8),   # R1-Distill-Qwen-14B's
    (8, 64, 8, 8), (3, 64, 8, 2), (8, 4, 2, 2),                   # 32B's; three GPUs; tiny-deepseek's
])
def test_the_degree_is_the_largest_power_of_two_that_divides_the_heads(gpus, heads, kv, degree):
    assert tensor_parallel_degree(gpus, heads, kv) == degree


def test_a_degree_that_does_not_divide_the_heads_is_refused():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32)
    with pytest.raises(ValueError, match="must divide the model's 4 attention heads, 2 KV heads"):
        Decoder(model, num_slots=2, max_len=64, device=torch.device("cpu"), dtype=torch.float32,
                tp_rank=0, tp_size=4)


def _greedy(dec: Decoder) -> list[list[int]]:
    """Both prompts prefilled in one batch (slots 0 and 1), then NEW greedy decode steps."""
    logits = dec.prefill([(slot, 0, p) for slot, p in enumerate(PROMPTS)])
    out = [[int(t)] for t in logits.argmax(dim=-1)]
    lengths = [len(p) for p in PROMPTS]
    for _ in range(NEW - 1):
        for slot in range(len(PROMPTS)):
            dec.tokens[slot] = out[slot][-1]
            dec.positions[slot] = lengths[slot]
        dec.decode(len(PROMPTS), 64)
        for slot in range(len(PROMPTS)):
            out[slot].append(int(dec.greedy[slot]))
            lengths[slot] += 1
    return out


def _decoder(rank: int = 0, size: int = 1) -> Decoder:
    from transformers import AutoModelForCausalLM

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32)
    return Decoder(model, num_slots=4, max_len=64, device=torch.device("cpu"), dtype=torch.float32,
                   tp_rank=rank, tp_size=size)


def _rank(rank: int, size: int, port: int, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    _join(rank, size, port)
    try:
        results.put((rank, _greedy(_decoder(rank, size))))
        dist.barrier()  # both ranks through their last collective (see _join)
    finally:
        dist.destroy_process_group()


def _join(rank: int, size: int, port: int) -> None:
    """Join the two-rank gloo group with a 2-minute timeout, so a rank whose peer failed fails too
    instead of waiting out gloo's default 30 minutes. Each rank meets the other at a barrier after its
    last collective, on the success path only: gloo aborted (SIGABRT) a rank that tore its connections
    down while its peer was still closing them (seen once in about twenty runs)."""
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=120))


def _two_ranks(target) -> dict:
    """Run target(rank, 2, port, results) in two spawned processes; {rank: what it put}."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, 2, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=240) for _ in procs)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:  # a rank left waiting on a failed peer must not hang pytest's exit
            if p.is_alive():
                p.terminate()
    return got


def test_two_ranks_give_the_tokens_of_one_process():
    torch.set_grad_enabled(False)
    whole = _greedy(_decoder())
    got = _two_ranks(_rank)
    assert got[0] == whole and got[1] == whole, (got, whole)
    assert all(len(t) == NEW for t in whole)


def _engine_rank(rank: int, size: int, port: int, results) -> None:
    """Rank 0 serves the prompts through the engine (all at once: one batch); rank 1 follows."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    _join(rank, size, port)
    try:
        if rank == 0:
            eng = Engine(str(TINY), device="cpu", max_model_len=64, max_slots=16, tp_rank=0, tp_size=size)
            try:
                queues = [queue.Queue() for _ in PROMPTS]
                for p, q in zip(PROMPTS, queues):
                    eng.submit(p, max_tokens=NEW, queue=q)
                results.put((rank, [_drain(q) for q in queues]))
            finally:
                eng.shutdown()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32)
            dec = Decoder(model, num_slots=16, max_len=64, device=torch.device("cpu"), dtype=torch.float32,
                          tp_rank=rank, tp_size=size)
            results.put((rank, follow(dec)))
        dist.barrier()  # both ranks through their last collective (see _join)
    finally:
        dist.destroy_process_group()


def _drain(q) -> list[int]:
    while True:
        ev = q.get(timeout=120)
        if ev.finished:
            return list(ev.result.output_token_ids)


def test_the_engine_on_two_ranks_serves_what_it_serves_on_one():
    """Continuous batching over a two-rank model: the same greedy tokens as the engine on one
    process; the follower ran every forward the leader made, then stopped with it."""
    eng = Engine(str(TINY), device="cpu", max_model_len=64, max_slots=16)
    try:
        one = [list(eng.generate(p, max_tokens=NEW, timeout=120).output_token_ids) for p in PROMPTS]
    finally:
        eng.shutdown()
    got = _two_ranks(_engine_rank)
    assert got[0] == one, (got[0], one)
    assert got[1] >= NEW  # a prefill and a decode per step at least, the follower's count
