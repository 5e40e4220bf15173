"""Tensor-parallel serving in lockstep: rank 0 runs the engine (scheduling, sampling, streaming) and
tells the other ranks each forward it makes; every rank runs the same forward over its share of the
model (`Decoder` with `tp_rank`/`tp_size`), so the all-reduces inside meet.

- `Leader` wraps rank 0's `Decoder`: before a prefill or a decode it broadcasts the call and its
  inputs (the chunks; the batch's tokens and positions) to the group; everything else is the
  decoder's own.
- `follow(decoder, group)` is the loop of ranks 1..N-1: it runs what the leader broadcasts until
  the leader says stop.
Commands travel with `torch.distributed.broadcast_object_list` (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from .model import Decoder


def _broadcast(cmd: tuple | None, group) -> tuple:
    """The leader's command (rank 0 passes it, the others None and receive it)."""
    box: list[tuple | None] = [cmd]
    dist.broadcast_object_list(box, src=0, group=group)
    received = box[0]
    if received is None:  # the leader always sends a command
        raise RuntimeError("lockstep: the leader broadcast no command")
    return received


class Leader:
    """Rank 0's decoder: the same interface, each forward announced to the other ranks first."""

    def __init__(self, dec: Decoder, group=None):
        self._dec, self._group, self._stopped = dec, group, False

    def __getattr__(self, name):  # tokens, positions, logits, greedy, t_alloc, vocab, ...
        return getattr(self._dec, name)

    def prefill(self, chunks: list[tuple[int, int, list[int]]]) -> torch.Tensor:
        _broadcast(("prefill", [(int(s), int(p), list(map(int, t))) for s, p, t in chunks]), self._group)
        return self._dec.prefill(chunks)

    def decode(self, B: int, T: int) -> None:
        _broadcast(("decode", B, T, self._dec.tokens[:B].tolist(), self._dec.positions[:B].tolist()), self._group)
        self._dec.decode(B, T)

    def stop(self) -> None:
        """Let the other ranks' `follow` return (once: they are gone after it). The barrier after the
        command: no rank leaves the group while another is still inside a collective."""
        if not self._stopped:
            self._stopped = True
            _broadcast(("stop",), self._group)
            dist.barrier(group=self._group)


def follow(dec: Decoder, group=None) -> int:
    """Run the leader's forwards on this rank until it stops; returns how many were run."""
    n = 0
    with torch.inference_mode():
        while True:
            cmd = _broadcast(None, group)
            if cmd[0] == "stop":
                dist.barrier(group=group)  # the leader's, in Leader.stop
                return n
            if cmd[0] == "prefill":
                dec.prefill(cmd[1])
            elif cmd[0] == "decode":
                _, B, T, tokens, positions = cmd
                dec.tokens[:B].copy_(torch.tensor(tokens, dtype=torch.long))
                dec.positions[:B].copy_(torch.tensor(positions, dtype=torch.long))
                dec.decode(B, T)
            else:
                raise RuntimeError(f"unknown command from the leader: {cmd[0]!r}")
            n += 1


def _join(device: str, rank: int, size: int, init_method: str) -> None:
    """Join the group on this process's device: NCCL on a GPU (made current), gloo on the CPU."""
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if on_cuda else "gloo", init_method=init_method, rank=rank, world_size=size)


def _follower(model_path: str, rank: int, size: int, init_method: str, device: str, dtype: str) -> None:
    """A follower process: join the group, take the leader's decoder settings, load this rank's
    share of the model and follow until the leader stops."""
    from transformers import AutoModelForCausalLM

    _join(device, rank, size, init_method)
    try:
        _, num_slots, max_len = _broadcast(None, None)
        torch_dtype = getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(device).eval()
        with torch.no_grad():
            dec = Decoder(model, num_slots=num_slots, max_len=max_len, device=torch.device(device),
                          dtype=torch_dtype, tp_rank=rank, tp_size=size)
        del model
        follow(dec)
    finally:
        dist.destroy_process_group()
    # Done: leave without the interpreter's teardown, where torch's and gloo's threads have aborted
    # the process (SIGABRT) after a clean stop. An error above still ends it with a traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def start_followers(model_path: str, size: int, *, device: str, dtype: torch.dtype, python: str | None = None):
    """Rank 0's side of starting a tensor-parallel group on this host: start ranks 1..size-1 (spawned
    processes on cuda:1.. or the CPU), join the group as rank 0 (cuda:0) and return the processes.
    The engine then announces its decoder settings (`announce`) before it builds its own share.
    `python`: the interpreter the processes run (inside Triton's Python backend, sys.executable is
    the stub, not Python)."""
    import multiprocessing as mp
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        init = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    ctx = mp.get_context("spawn")
    if python:
        ctx.set_executable(python)
    dtype_name = str(dtype).removeprefix("torch.")
    on_cuda = device.startswith("cuda")
    procs = [ctx.Process(target=_follower, daemon=True, name=f"gpuprov-engine-rank{r}",
                         args=(model_path, r, size, init, f"cuda:{r}" if on_cuda else "cpu", dtype_name))
             for r in range(1, size)]
    for p in procs:
        p.start()
    _join("cuda:0" if on_cuda else "cpu", 0, size, init)
    return procs


def announce(num_slots: int, max_len: int, group=None) -> None:
    """The leader's decoder settings, which the followers need before they build their shares."""
    _broadcast(("init", num_slots, max_len), group)
