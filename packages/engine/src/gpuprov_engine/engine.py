"""Continuous batching over a static KV cache.

One background thread runs steps while there is work. A step:
1. applies cancellations, and admits waiting requests (FIFO) into free slots (lowest slot first);
2. prefills: up to `prefill_tokens` prompt tokens from the sequences still in prefill, in chunks (the
   oldest gets at most half the budget when others wait, the rest goes shortest-remaining-first), in
   one batched eager forward; a sequence whose prompt is complete samples its first token;
3. decodes one token for every sequence past prefill: rows 0..B-1 of the cache (row == slot), B the
   smallest batch bucket holding the highest live slot, attending to the smallest length bucket that
   holds the longest sequence; on CUDA a captured graph per (B, length) bucket is replayed.
A sequence leaves on EOS, a stop token or string, max_tokens, cancellation or error, and its slot is
free for the next step.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue as queue_mod
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .metrics import EngineMetrics
from .model import Decoder

if TYPE_CHECKING:
    from .lockstep import Leader

log = logging.getLogger("gpuprov_engine")

PREFILL, DECODE, DONE = "prefill", "decode", "done"


class QueueFullError(RuntimeError):
    """The waiting queue is full: the request was refused, nothing was allocated."""


class EngineClosedError(RuntimeError):
    pass


@dataclass
class Result:
    request_id: str
    num_input_tokens: int
    output_token_ids: list[int]
    finish_reason: str  # "stop" (EOS, stop token or stop string), "length", "cancelled", "error"
    stop: int | str | None = None  # the stop token id or stop string that ended it
    error: str | None = None
    ttft: float | None = None  # seconds from submit to the first token
    latency: float = 0.0  # seconds from submit to the end

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)


@dataclass
class TokenEvent:
    """Sent to on_token / the queue: one per generated token, the last with finished=True (and the
    Result). A request that ends without a new token (cancelled, error) gets one event with token_id
    None."""

    request_id: str
    token_id: int | None
    index: int
    finished: bool
    result: Result | None = None


@dataclass
class _Seq:
    rid: str
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop_ids: frozenset
    stop_strings: tuple
    sink: Callable[[TokenEvent], None] | None
    gen: torch.Generator | None
    t_submit: float
    slot: int = -1
    length: int = 0  # positions of this sequence in the cache
    state: str = PREFILL
    out: list[int] = field(default_factory=list)
    t_first: float | None = None
    t_last: float = 0.0
    text_checked: int = 0


def _buckets(limit: int, base: Sequence[int]) -> list[int]:
    """The base buckets well below limit, and limit itself."""
    return sorted({b for b in base if 4 * b < 3 * limit} | {limit})


class Engine:
    def __init__(
        self,
        model,
        *,
        tokenizer=None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_model_len: int | None = None,
        max_slots: int = 64,
        min_slots: int = 16,
        kv_cache_bytes: int | None = None,
        max_queue: int = 256,
        prefill_tokens: int | None = None,
        max_tokens_limit: int | None = None,
        batch_buckets: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
        length_buckets: Sequence[int] = (256, 512, 1024, 2048, 4096, 8192),
        cuda_graphs: bool | None = None,
        eos_token_ids: Sequence[int] | None = None,
        seed: int = 0,
        start: bool = True,
        tp_rank: int = 0,
        tp_size: int = 1,
        tp_group=None,
        announce: bool = False,
    ):
        from transformers import AutoModelForCausalLM

        if tp_size > 1 and tp_rank != 0:
            raise ValueError("the engine runs on rank 0; the other ranks run lockstep.follow")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        on_cuda = self.device.type == "cuda"
        self.dtype = dtype or (torch.bfloat16 if on_cuda else torch.float32)
        if isinstance(model, str):
            path = model
            model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
            if tokenizer is None:
                try:
                    from transformers import AutoTokenizer

                    tokenizer = AutoTokenizer.from_pretrained(path)
                except Exception:  # stop strings then need a tokenizer given explicitly
                    tokenizer = None
        model = model.to(self.device).eval()
        cfg = model.config
        self.tokenizer = tokenizer
        self.max_model_len = int(max_model_len or min(getattr(cfg, "max_position_embeddings", 4096), 4096))
        self.max_tokens_limit = min(int(max_tokens_limit or self.max_model_len - 1), self.max_model_len - 1)
        if eos_token_ids is None:
            eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            eos = cfg.eos_token_id if eos is None else eos
            eos_token_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        self.eos_ids = frozenset(int(e) for e in eos_token_ids)

        # Slots from the KV-cache budget.
        per_slot = Decoder.kv_bytes_per_slot(cfg, self.max_model_len, self.dtype)
        if kv_cache_bytes is None:
            slots = max_slots
            if on_cuda:
                free, _ = torch.cuda.mem_get_info(self.device)
                slots = min(slots, int(0.8 * free) // per_slot)
        else:
            slots = min(max_slots, kv_cache_bytes // per_slot)
        if slots < min_slots:
            raise ValueError(f"KV-cache budget of {kv_cache_bytes if kv_cache_bytes is not None else 'free memory'} "
                             f"bytes holds {slots} slots of {self.max_model_len} tokens ({per_slot} bytes each); "
                             f"at least {min_slots} are needed")
        self.num_slots = int(slots)
        self.kv_cache_bytes = per_slot * self.num_slots
        if tp_size > 1 and announce:  # followers started by lockstep.start_followers wait for these
            from .lockstep import announce as tell_followers

            tell_followers(self.num_slots, self.max_model_len, tp_group)
        # Rank 0 of a tensor-parallel group wraps its decoder in lockstep's Leader (same interface).
        self.dec: Decoder | Leader
        with torch.no_grad():
            self.dec = Decoder(model, num_slots=self.num_slots, max_len=self.max_model_len,
                               device=self.device, dtype=self.dtype, tp_rank=tp_rank, tp_size=tp_size,
                               tp_group=tp_group)
        if tp_size > 1:  # the other ranks make each forward with it (lockstep.follow)
            from .lockstep import Leader

            self.dec = Leader(self.dec, tp_group)
        self.tp_size = tp_size
        del model
        if on_cuda:
            torch.cuda.empty_cache()
        self.batch_buckets = _buckets(self.num_slots, batch_buckets)
        self.length_buckets = _buckets(self.dec.t_alloc, length_buckets)
        # Not with tensor parallelism yet: each rank would replay its own graphs of the all-reduces.
        self.cuda_graphs = (on_cuda if cuda_graphs is None else bool(cuda_graphs and on_cuda)) and tp_size == 1
        # Prompt tokens per step: enough to fill a GPU; on a CPU fewer, so early arrivals start sooner.
        self.prefill_tokens = int(prefill_tokens or (2048 if on_cuda else 512))
        self.max_queue = int(max_queue)

        self.metrics = EngineMetrics()
        self.metrics.slots_total = self.num_slots
        self.metrics.kv_capacity_tokens = self.num_slots * self.max_model_len
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._cv = threading.Condition()
        self._waiting: deque[_Seq] = deque()
        self._cancels: set[str] = set()
        self._live: dict[str, _Seq] = {}  # waiting or running, by id
        self._slots: list[_Seq | None] = [None] * self.num_slots
        self._free: list[int] = list(range(self.num_slots))
        self._closing = False
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        if on_cuda:
            self._tok_host = torch.zeros(self.num_slots, dtype=torch.long).pin_memory()
            self._pos_host = torch.zeros(self.num_slots, dtype=torch.long).pin_memory()
        else:
            self._tok_host = torch.zeros(self.num_slots, dtype=torch.long)
            self._pos_host = torch.zeros(self.num_slots, dtype=torch.long)
        self.capture_seconds = 0.0
        if self.cuda_graphs:
            self._capture()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # -- public API --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="gpuprov-engine", daemon=True)
            self._thread.start()

    def submit(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop_token_ids: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        on_token: Callable[[TokenEvent], None] | None = None,
        queue: queue_mod.Queue | None = None,
        seed: int | None = None,
        ignore_eos: bool = False,
        request_id: str | None = None,
    ) -> str:
        """Queue a request; returns its id. Raises ValueError for bad input and QueueFullError when the
        waiting queue is full, before anything is allocated."""
        try:
            prompt = [int(t) for t in prompt_ids]
            max_tokens = int(max_tokens)
            if not prompt:
                raise ValueError("the prompt has no tokens")
            if not 1 <= max_tokens <= self.max_tokens_limit:
                self.metrics.fail("invalid_max_tokens")
                raise ValueError(f"max_tokens must be 1..{self.max_tokens_limit}, got {max_tokens}")
            if len(prompt) + max_tokens > self.max_model_len:
                self.metrics.fail("context_overflow")
                raise ValueError(f"prompt of {len(prompt)} tokens + max_tokens {max_tokens} = "
                                 f"{len(prompt) + max_tokens} exceeds the context of {self.max_model_len} tokens")
            if min(prompt) < 0 or max(prompt) >= self.dec.vocab:
                raise ValueError(f"token ids must be 0..{self.dec.vocab - 1}")
            if stop_strings and self.tokenizer is None:
                raise ValueError("stop strings need the engine to have a tokenizer")
            if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
                raise ValueError(f"bad sampling settings: temperature {temperature}, top_p {top_p}, top_k {top_k}")
        except ValueError as exc:
            if "max_tokens" not in str(exc) and "context" not in str(exc):
                self.metrics.fail("invalid_request")
            raise
        sink: Callable[[TokenEvent], None] | None
        if queue is not None:
            sink = queue.put
            if on_token is not None:
                user = on_token

                def sink(ev, _q=queue, _u=user):
                    _u(ev)
                    _q.put(ev)
        else:
            sink = on_token
        gen = None
        if temperature > 0:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(self._rng.getrandbits(63) if seed is None else int(seed))
        stop_ids = frozenset(int(t) for t in stop_token_ids) | (frozenset() if ignore_eos else self.eos_ids)
        with self._cv:
            if self._closing:
                raise EngineClosedError("the engine is shut down")
            if len(self._waiting) >= self.max_queue:
                self.metrics.fail("queue_full")
                raise QueueFullError(f"the waiting queue is full ({self.max_queue} requests wait for "
                                     f"{self.num_slots} slots); try again later")
            rid = request_id or f"req-{next(self._ids)}"
            if rid in self._live:
                raise ValueError(f"request id {rid} is in use")
            seq = _Seq(rid=rid, prompt=prompt, max_tokens=max_tokens, temperature=float(temperature),
                       top_p=float(top_p), top_k=int(top_k), stop_ids=stop_ids, stop_strings=tuple(stop_strings),
                       sink=sink, gen=gen, t_submit=time.perf_counter())
            self._waiting.append(seq)
            self._live[rid] = seq
            with self.metrics.lock:
                self.metrics.requests += 1
                self.metrics.prompt_tokens += len(prompt)
                self.metrics.waiting = len(self._waiting)
            self._cv.notify()
        return rid

    def generate(self, prompt_ids: Sequence[int], timeout: float | None = None, **kw) -> Result:
        """Blocking helper: submit and wait for the Result."""
        q: queue_mod.Queue = queue_mod.Queue()
        self.submit(prompt_ids, queue=q, **kw)
        while True:
            ev = q.get(timeout=timeout)
            if ev.finished:
                return ev.result

    def cancel(self, request_id: str) -> bool:
        """Cancel a waiting or running request; its slot is freed at the next step. False if unknown
        or already finished."""
        with self._cv:
            if request_id not in self._live:
                return False
            self._cancels.add(request_id)
            self._cv.notify()
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        for seq in list(self._live.values()):
            self._finish(seq, "cancelled", error="engine shut down")
        if self.tp_size > 1:
            from .lockstep import Leader

            assert isinstance(self.dec, Leader)  # made so in __init__ when tp_size > 1
            self.dec.stop()

    def snapshot(self) -> dict:
        return self.metrics.snapshot()

    def running(self) -> int:
        return sum(s is not None for s in self._slots)

    # -- the loop ------------------------------------------------------------------------------------
    def _has_work(self) -> bool:
        return bool(self._waiting) or any(s is not None for s in self._slots) or bool(self._cancels)

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cv:
                while not self._closing and not self._has_work():
                    self._cv.wait()
                if self._closing:
                    return
            try:
                with torch.inference_mode():
                    self.step()
            except Exception as exc:  # a failed step fails what ran in it, not the engine
                log.exception("engine step failed")
                for seq in [s for s in self._slots if s is not None]:
                    self._finish(seq, "error", error=f"{type(exc).__name__}: {exc}")

    def step(self) -> None:
        """One scheduling step (called by the loop thread; tests may call it with start=False)."""
        with self._cv:
            cancels, self._cancels = self._cancels, set()
            for rid in cancels:
                seq = self._live.get(rid)
                if seq is not None and seq.state != DONE:
                    if seq.slot < 0:
                        self._waiting.remove(seq)
                    self._finish(seq, "cancelled")
            admitted = []
            while self._waiting and self._free:
                seq = self._waiting.popleft()
                seq.slot = heapq.heappop(self._free)
                self._slots[seq.slot] = seq
                admitted.append(seq)
            self.metrics.waiting = len(self._waiting)
        chunks = self._plan_prefill()
        if chunks:
            self._prefill(chunks)
        decoding = [s for s in self._slots if s is not None and s.state == DECODE]
        if decoding:
            self._decode(decoding)
        with self.metrics.lock:
            live = [s for s in self._slots if s is not None]
            self.metrics.steps += 1
            self.metrics.running = len(live)
            self.metrics.slots_used = len(live)
            self.metrics.kv_used_tokens = sum(s.length for s in live)

    def _plan_prefill(self) -> list[tuple[_Seq, int, list[int]]]:
        pre = sorted((s for s in self._slots if s is not None and s.state == PREFILL), key=lambda s: s.t_submit)
        if not pre:
            return []
        budget = self.prefill_tokens
        first, rest = pre[0], sorted(pre[1:], key=lambda s: len(s.prompt) - s.length)
        chunks = []
        for i, seq in enumerate([first, *rest]):
            if budget <= 0:
                break
            cap = budget if (i or not rest) else max(budget // 2, 1)
            n = min(len(seq.prompt) - seq.length, cap)
            chunks.append((seq, seq.length, seq.prompt[seq.length:seq.length + n]))
            budget -= n
        return chunks

    def _prefill(self, chunks) -> None:
        logits = self.dec.prefill([(s.slot, start, toks) for s, start, toks in chunks])
        done_rows, done_seqs = [], []
        for i, (seq, start, toks) in enumerate(chunks):
            seq.length = start + len(toks)
            if seq.length == len(seq.prompt):
                done_rows.append(i)
                done_seqs.append(seq)
        if not done_seqs:
            return
        rows = logits[done_rows]
        greedy = rows.argmax(dim=-1).tolist()
        now = time.perf_counter()
        for j, seq in enumerate(done_seqs):
            tok = greedy[j] if seq.gen is None else self._sample(rows[j], seq)
            seq.state = DECODE
            self._append(seq, tok, now)

    def _decode(self, seqs: list[_Seq]) -> None:
        top = max(s.slot for s in seqs) + 1
        B = next(b for b in self.batch_buckets if b >= top)
        need = max(s.length for s in seqs) + 1
        T = next(t for t in self.length_buckets if t >= need) if self.cuda_graphs else min(
            self.dec.t_alloc, -(-need // 64) * 64)
        tok, pos = self._tok_host, self._pos_host
        tok[:B] = 0
        pos[:B] = self.max_model_len  # the scratch column: rows with no decoding sequence
        for s in seqs:
            tok[s.slot] = s.out[-1]
            pos[s.slot] = s.length
        self.dec.tokens[:B].copy_(tok[:B], non_blocking=True)
        self.dec.positions[:B].copy_(pos[:B], non_blocking=True)
        graph = self._graphs.get((B, T))
        if graph is not None:
            graph.replay()
        else:
            self.dec.decode(B, T)
        greedy = self.dec.greedy[:B].tolist()
        now = time.perf_counter()
        for s in seqs:
            s.length += 1
            t = greedy[s.slot] if s.gen is None else self._sample(self.dec.logits[s.slot], s)
            self._append(s, t, now)

    def _sample(self, logits: torch.Tensor, seq: _Seq) -> int:
        x = logits.float() / seq.temperature
        if seq.top_k > 0 and seq.top_k < x.numel():
            kth = torch.topk(x, seq.top_k).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        if seq.top_p < 1.0:
            sx, idx = torch.sort(x, descending=True)
            probs = torch.softmax(sx, dim=-1)
            drop = (torch.cumsum(probs, dim=-1) - probs) > seq.top_p
            sx = sx.masked_fill(drop, float("-inf"))
            x = torch.empty_like(x).scatter_(0, idx, sx)
        probs = torch.softmax(x, dim=-1)
        return int(torch.multinomial(probs, 1, generator=seq.gen).item())

    def _append(self, seq: _Seq, tok: int, now: float) -> None:
        seq.out.append(tok)
        m = self.metrics
        with m.lock:
            m.generated_tokens += 1
            if seq.t_first is None:
                seq.t_first = now
                m.ttft.observe(now - seq.t_submit)
            else:
                m.itl.observe(now - seq.t_last)
        seq.t_last = now
        reason, stop = None, None
        if tok in seq.stop_ids:
            reason, stop = "stop", tok
        elif seq.stop_strings:
            text = self.tokenizer.decode(seq.out, skip_special_tokens=True)
            lo = max(0, seq.text_checked - max(len(s) for s in seq.stop_strings))
            for s in seq.stop_strings:
                if s and text.find(s, lo) >= 0:
                    reason, stop = "stop", s
                    break
            seq.text_checked = len(text)
        if reason is None and len(seq.out) >= seq.max_tokens:
            reason = "length"
        if reason is None:
            self._emit(seq, TokenEvent(seq.rid, tok, len(seq.out) - 1, False))
        else:
            self._finish(seq, reason, stop=stop, last_token=tok)

    def _emit(self, seq: _Seq, ev: TokenEvent) -> None:
        if seq.sink is None:
            return
        try:
            seq.sink(ev)
        except Exception:
            log.exception("on_token callback of %s failed; cancelling it", seq.rid)
            if not ev.finished:
                with self._cv:
                    self._cancels.add(seq.rid)
                self.metrics.fail("callback_error")

    def _finish(self, seq: _Seq, reason: str, *, stop=None, error=None, last_token=None) -> None:
        if seq.state == DONE:
            return
        seq.state = DONE
        now = time.perf_counter()
        with self._cv:
            self._live.pop(seq.rid, None)
            if seq.slot >= 0:
                self._slots[seq.slot] = None
                heapq.heappush(self._free, seq.slot)
        res = Result(request_id=seq.rid, num_input_tokens=len(seq.prompt), output_token_ids=list(seq.out),
                     finish_reason=reason, stop=stop, error=error,
                     ttft=None if seq.t_first is None else seq.t_first - seq.t_submit, latency=now - seq.t_submit)
        with self.metrics.lock:
            self.metrics.completed += 1
            self.metrics.finish_reasons[reason] += 1
            if reason in ("cancelled", "error"):
                self.metrics.failures[reason] += 1
        idx = len(seq.out) - 1 if last_token is not None else len(seq.out)
        self._emit(seq, TokenEvent(seq.rid, last_token, idx, True, res))

    # -- CUDA graphs ---------------------------------------------------------------------------------
    def _capture(self) -> None:
        t0 = time.perf_counter()
        d = self.dec
        d.tokens.zero_()
        d.positions.fill_(self.max_model_len)  # warm-up and capture write the scratch column only
        keys = [(b, t) for b in reversed(self.batch_buckets) for t in reversed(self.length_buckets)]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for b, t in keys[:2] + keys[-1:]:
                d.decode(b, t)
        torch.cuda.current_stream(self.device).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for b, t in keys:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    d.decode(b, t)
                self._graphs[(b, t)] = g
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - t0
