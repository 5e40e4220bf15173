"""The engine on the CPU with the repo's tiny-deepseek (Qwen2ForCausalLM): greedy tokens against
transformers' own generate, scheduling (no head-of-line blocking, 16 at once, cancel, full queue) and
input bounds."""

from __future__ import annotations

import queue
import random
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpuprov_engine import Engine, QueueFullError

TINY = Path(__file__).resolve().parents[3] / "roles" / "models" / "files" / "tiny-deepseek"
MAX_LEN = 256
NEW = 24


def _prompts():
    rng = random.Random(3)
    return [[rng.randrange(5, 1024) for _ in range(n)] for n in (1, 5, 23, 64, 97, 150)]


PROMPTS = _prompts()


@pytest.fixture(scope="module")
def hf():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def refs(hf):
    out = []
    with torch.inference_mode():
        for p in PROMPTS:
            out.append(hf.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False)[0, len(p):].tolist())
    return out


@pytest.fixture(scope="module")
def engine(hf):
    # prefill_tokens 64: the longer prompts are prefilled in chunks, side by side with decoding.
    eng = Engine(hf, tokenizer=AutoTokenizer.from_pretrained(str(TINY)), max_model_len=MAX_LEN, max_slots=16,
                 prefill_tokens=64, max_queue=64)
    yield eng
    eng.shutdown()


def _wait(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.002)


def test_greedy_matches_transformers_alone(engine, refs):
    for p, ref in zip(PROMPTS, refs):
        res = engine.generate(p, max_tokens=NEW, timeout=30)
        assert res.output_token_ids == ref, f"prompt of {len(p)} tokens"
        assert res.num_input_tokens == len(p)
        assert res.num_output_tokens == len(ref)
        assert res.finish_reason == ("stop" if len(ref) < NEW else "length")


def test_greedy_matches_transformers_in_a_running_batch(engine, refs):
    # A long request runs throughout; the others join at different steps, with different lengths.
    q_long: queue.Queue = queue.Queue()
    long_id = engine.submit(PROMPTS[2], max_tokens=MAX_LEN - len(PROMPTS[2]), ignore_eos=True, queue=q_long)
    q_long.get(timeout=30)  # it is decoding
    queues = []
    for i, p in enumerate(PROMPTS):
        q: queue.Queue = queue.Queue()
        engine.submit(p, max_tokens=NEW, queue=q)
        queues.append(q)
        if i % 2:
            time.sleep(0.01)

    def result(q):
        while True:
            ev = q.get(timeout=30)
            if ev.finished:
                return ev.result

    for q, ref, p in zip(queues, refs, PROMPTS):
        assert result(q).output_token_ids == ref, f"prompt of {len(p)} tokens"
    assert engine.cancel(long_id)
    assert result(q_long).finish_reason == "cancelled"


def test_short_request_is_not_blocked_by_a_long_one(engine):
    order = []
    lock = threading.Lock()
    started = threading.Event()

    def cb(name):
        def f(ev):
            if name == "long":
                started.set()
            if ev.finished:
                with lock:
                    order.append((name, ev.result.num_output_tokens))
        return f

    engine.submit(PROMPTS[4], max_tokens=MAX_LEN - len(PROMPTS[4]), ignore_eos=True, on_token=cb("long"))
    assert started.wait(30)
    engine.submit(PROMPTS[1], max_tokens=4, ignore_eos=True, on_token=cb("short"))
    _wait(lambda: len(order) == 2, 60)
    assert order[0] == ("short", 4)
    assert order[1] == ("long", MAX_LEN - len(PROMPTS[4]))


def test_sixteen_concurrent_requests_all_complete(engine):
    rng = random.Random(5)
    qs = []
    for i in range(20):  # 16 slots: four wait for a free one
        q: queue.Queue = queue.Queue()
        p = [rng.randrange(5, 1024) for _ in range(rng.randrange(1, 60))]
        engine.submit(p, max_tokens=8 + i, ignore_eos=True, queue=q)
        qs.append((q, len(p), 8 + i))
    for q, n_in, n_out in qs:
        while True:
            ev = q.get(timeout=60)
            if ev.finished:
                break
        assert (ev.result.num_input_tokens, ev.result.num_output_tokens) == (n_in, n_out)
        assert ev.result.finish_reason == "length"
    _wait(lambda: engine.running() == 0)
    snap = engine.snapshot()
    assert snap["running"] == 0 and snap["ttft_seconds"]["count"] >= 20 and snap["generated_tokens"] > 0


def test_cancel_frees_the_slot(engine):
    before = engine.snapshot()["failures"].get("cancelled", 0)
    q: queue.Queue = queue.Queue()
    rid = engine.submit(PROMPTS[3], max_tokens=MAX_LEN - len(PROMPTS[3]), ignore_eos=True, queue=q)
    q.get(timeout=30)
    assert engine.running() == 1
    assert engine.cancel(rid)
    while True:
        ev = q.get(timeout=30)
        if ev.finished:
            break
    assert ev.result.finish_reason == "cancelled"
    assert 0 < ev.result.num_output_tokens < MAX_LEN - len(PROMPTS[3])
    _wait(lambda: engine.running() == 0)
    assert engine.snapshot()["failures"]["cancelled"] == before + 1
    assert not engine.cancel(rid)  # already gone


def test_bad_inputs_are_refused_while_others_run(engine, refs):
    q: queue.Queue = queue.Queue()
    engine.submit(PROMPTS[4], max_tokens=NEW, queue=q)
    with pytest.raises(ValueError, match=r"prompt of 200 tokens \+ max_tokens 100 = 300 exceeds the context of 256"):
        engine.submit([7] * 200, max_tokens=100)
    with pytest.raises(ValueError, match=r"max_tokens must be 1\.\.255, got 0"):
        engine.submit([7], max_tokens=0)
    with pytest.raises(ValueError, match=r"max_tokens must be 1\.\.255, got 256"):
        engine.submit([7], max_tokens=256)
    with pytest.raises(ValueError, match="no tokens"):
        engine.submit([], max_tokens=3)
    with pytest.raises(ValueError, match="token ids"):
        engine.submit([5000], max_tokens=3)
    while True:
        ev = q.get(timeout=30)
        if ev.finished:
            break
    assert ev.result.output_token_ids == refs[4]
    fails = engine.snapshot()["failures"]
    assert fails["context_overflow"] >= 1 and fails["invalid_max_tokens"] >= 2


def test_stop_token_and_stop_string(engine, refs):
    ref = refs[5]
    stop = ref[3]
    res = engine.generate(PROMPTS[5], max_tokens=NEW, stop_token_ids=[stop], timeout=30)
    assert res.output_token_ids == ref[: ref.index(stop) + 1]
    assert (res.finish_reason, res.stop) == ("stop", stop)
    text = engine.tokenizer.decode(ref, skip_special_tokens=True)
    piece = text[len(text) // 2:][:3]
    res = engine.generate(PROMPTS[5], max_tokens=NEW, stop_strings=[piece], timeout=30)
    assert res.finish_reason == "stop" and res.stop == piece
    assert piece in engine.tokenizer.decode(res.output_token_ids, skip_special_tokens=True)
    assert res.output_token_ids == ref[: res.num_output_tokens]


def test_sampling_is_seeded(engine):
    kw = dict(max_tokens=12, temperature=0.8, top_p=0.9, top_k=50, ignore_eos=True, timeout=30)
    a = engine.generate(PROMPTS[2], seed=11, **kw).output_token_ids
    b = engine.generate(PROMPTS[2], seed=11, **kw).output_token_ids
    c = engine.generate(PROMPTS[2], seed=12, **kw).output_token_ids
    assert a == b and len(a) == 12 and a != c


def test_full_queue_refuses_cleanly(hf):
    eng = Engine(hf, max_model_len=MAX_LEN, max_slots=16, max_queue=2, start=False)
    try:
        q: queue.Queue = queue.Queue()
        eng.submit(PROMPTS[0], max_tokens=3, queue=q)
        eng.submit(PROMPTS[1], max_tokens=3, queue=q)
        with pytest.raises(QueueFullError, match="waiting queue is full"):
            eng.submit(PROMPTS[2], max_tokens=3)
        assert eng.snapshot()["failures"] == {"queue_full": 1}
        eng.start()
        done = [q.get(timeout=30) for _ in range(6)]
        assert sum(ev.finished for ev in done) == 2
        eng.submit(PROMPTS[2], max_tokens=3)  # room again
    finally:
        eng.shutdown()


def test_slots_come_from_the_kv_budget(hf):
    per_slot = 2 * 2 * 2 * (MAX_LEN + 1) * 16 * 4  # k+v, layers, kv heads, positions, head dim, fp32
    eng = Engine(hf, max_model_len=MAX_LEN, max_slots=64, kv_cache_bytes=20 * per_slot, start=False)
    assert eng.num_slots == 20 and eng.kv_cache_bytes == 20 * per_slot
    eng.shutdown()
    with pytest.raises(ValueError, match="holds 15 slots.*at least 16"):
        Engine(hf, max_model_len=MAX_LEN, kv_cache_bytes=15 * per_slot, start=False)
