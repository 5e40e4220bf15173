"""triton/model.py against a stand-in for triton_python_backend_utils: responses come from the engine
thread through the response sender, streamed text adds up to the whole text, bad requests fail
alone, a client's cancellation cancels the request in the engine, metrics are exported."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import types
import weakref
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT.parents[1] / "roles" / "models" / "files" / "tiny-deepseek"
FINAL = 1


class Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class TritonError:
    INVALID_ARG, UNAVAILABLE, INTERNAL = "INVALID_ARG", "UNAVAILABLE", "INTERNAL"

    def __init__(self, message, code=None):
        self.message, self.code = message, code


class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error


class Metric:
    """Like Triton's: unusable once its family object is gone."""

    def __init__(self, family, labels):
        self.family, self.labels, self.value = weakref.ref(family), labels, 0.0

    def _check(self):
        if self.family() is None:
            raise RuntimeError("Invalid metric operation as the corresponding 'MetricFamily' has been deleted")

    def increment(self, v):
        self._check()
        self.value += v

    def set(self, v):
        self._check()
        self.value = v


class MetricFamily:
    COUNTER, GAUGE = "counter", "gauge"
    all: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def __init__(self, name, description, kind):
        self.name, self.kind, self.metrics = name, kind, []
        MetricFamily.all[name] = self

    def Metric(self, labels):  # noqa: N802 (pb_utils' name)
        m = Metric(self, labels)
        self.metrics.append(m)
        return m


class Sender:
    def __init__(self, gate=None):
        self.responses = []
        self.done = threading.Event()
        self.cancelled = False
        self.gate = gate  # when set: the first send waits for it (a sender thread that fell behind)

    def send(self, response=None, flags=0):
        assert not self.done.is_set(), "a response after the final flag"
        if self.gate is not None and not self.responses:
            assert self.gate.wait(60)
        self.responses.append(response)
        if flags & FINAL:
            self.done.set()

    def is_cancelled(self):
        return self.cancelled


class Request:
    def __init__(self, **inputs):
        self.inputs = {}
        for k, v in inputs.items():
            if isinstance(v, str):
                v = np.array([v.encode()], dtype=np.object_)
            elif isinstance(v, list):
                v = np.array([s.encode() for s in v], dtype=np.object_)
            elif isinstance(v, bool):
                v = np.array([v])
            elif isinstance(v, int):
                v = np.array([v], dtype=np.int32)
            else:
                v = np.array([v], dtype=np.float32)
            self.inputs[k] = Tensor(k, v)
        self.sender = Sender()

    def get_response_sender(self):
        return self.sender


def _fake_pb_utils():
    m = types.ModuleType("triton_python_backend_utils")
    m.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    m.Tensor, m.TritonError, m.InferenceResponse, m.MetricFamily = Tensor, TritonError, InferenceResponse, MetricFamily
    m.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    m.Logger = types.SimpleNamespace(log_info=lambda s: None, log_warn=lambda s: None, log_error=lambda s: None)
    return m


def _make(**extra):
    """The adapter initialised as Triton would, with the stand-in pb_utils in place."""
    sys.modules["triton_python_backend_utils"] = _fake_pb_utils()
    spec = importlib.util.spec_from_file_location("gpuprov_triton_model", ROOT / "triton" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    params = {"model_path": str(TINY), "max_model_len": "256", "max_slots": "16", "max_queue": "8",
              "default_max_tokens": "16", "max_tokens_limit": "200", **extra}
    cfg = {"parameters": {k: {"string_value": v} for k, v in params.items()}}
    m = mod.TritonPythonModel()
    m.initialize({"model_config": json.dumps(cfg), "model_name": "tiny", "model_repository": str(ROOT),
                  "model_version": "1"})
    return m


@pytest.fixture(scope="module")
def model():
    m = _make()
    yield m
    m.finalize()
    sys.modules.pop("triton_python_backend_utils", None)


def _text(resp):
    return resp.outputs["text_output"].reshape(-1)[0].decode()


def test_stream_and_whole_answers_agree_and_carry_counts(model):
    whole = Request(text_input="Ansible provisions GPU servers", max_tokens=40)
    stream = Request(text_input="Ansible provisions GPU servers", max_tokens=40, stream=True)
    bad = Request(text_input="x", max_tokens=0)
    assert model.execute([whole, stream, bad]) is None
    for r in (whole, stream, bad):
        assert r.sender.done.wait(30)
    assert len(whole.sender.responses) == 1
    text = _text(whole.sender.responses[0])
    assert text
    assert "".join(_text(r) for r in stream.sender.responses) == text
    final = stream.sender.responses[-1]
    n_in = int(final.outputs["num_input_tokens"].reshape(-1)[0])
    n_out = int(final.outputs["num_output_tokens"].reshape(-1)[0])
    assert n_in > 5 and 0 < n_out <= 40
    assert int(whole.sender.responses[0].outputs["num_output_tokens"].reshape(-1)[0]) == n_out
    err = bad.sender.responses[0].error
    assert err is not None and "max_tokens must be 1..200, got 0" in err.message


def test_stop_words_cut_the_text(model):
    probe = Request(text_input="the seed article", max_tokens=30, apply_chat_template=False)
    model.execute([probe])
    assert probe.sender.done.wait(30)
    text = _text(probe.sender.responses[0])
    stop = text[len(text) // 2:][:2]
    r = Request(text_input="the seed article", max_tokens=30, apply_chat_template=False, stop_words=[stop])
    model.execute([r])
    assert r.sender.done.wait(30)
    assert _text(r.sender.responses[0]) == text[: text.find(stop)]


def test_client_cancellation_frees_the_slot(model):
    r = Request(text_input="a long answer", max_tokens=200, stream=True)
    model.execute([r])
    t0 = time.monotonic()
    while not r.sender.responses and time.monotonic() - t0 < 30:
        time.sleep(0.005)
    r.sender.cancelled = True
    assert r.sender.done.wait(30)
    assert r.sender.responses[-1] is None  # the final flag alone
    t0 = time.monotonic()
    while model.engine.running() and time.monotonic() - t0 < 10:
        time.sleep(0.005)
    assert model.engine.running() == 0
    assert model.engine.snapshot()["failures"].get("cancelled", 0) >= 1


class FactorySender(Sender):
    """As in Triton's Python backend: the final flag deletes the request's response factory, and
    is_cancelled() is a round trip in which the server reads that factory. A read after the final
    send, or a final send during a read, is Triton reading freed memory (its SIGSEGV in
    TRITONBACKEND_ResponseFactoryIsCancelled)."""

    def __init__(self):
        super().__init__()
        self.reading = 0
        self.misuse: list[str] = []

    def send(self, response=None, flags=0):
        if flags & FINAL and self.reading:
            self.misuse.append("the final flag sent during an is_cancelled()")
        super().send(response, flags)

    def is_cancelled(self):
        if self.done.is_set():
            self.misuse.append("is_cancelled() after the final flag")
        self.reading += 1
        time.sleep(0.002)  # the round trip to the server
        self.reading -= 1
        return False


def test_no_cancellation_check_meets_a_final_response(model):
    """Short requests end while the watch thread checks every open request for cancellation: no check
    may reach a request whose final response was sent, or overlap that send."""
    senders = []
    for round_ in range(30):
        requests = [Request(text_input=f"question {round_} {i}", max_tokens=1 + i % 3, stream=bool(i % 2))
                    for i in range(8)]
        for r in requests:
            r.sender = FactorySender()
            senders.append(r.sender)
        model.execute(requests)
        for r in requests:
            assert r.sender.done.wait(30)
        time.sleep(0.01 * (round_ % 5))  # meet the watch thread's 50 ms polls at different phases
    assert all(s.responses[-1].error is None for s in senders)
    assert [m for s in senders for m in s.misuse] == []


def test_metrics_are_exported(model):
    model._sync_metrics()
    fams = MetricFamily.all
    assert fams["gpuprov_engine_generated_tokens_total"].metrics[0].value > 0
    assert fams["gpuprov_time_to_first_token_seconds_count"].metrics[0].value >= 3
    assert any(m.labels.get("reason") == "cancelled" and m.value >= 1
               for m in fams["gpuprov_engine_failures_total"].metrics)
    assert fams["gpuprov_engine_inter_token_seconds_count"].metrics[0].value > 0


def test_a_stream_goes_on_after_invalid_bytes_from_the_model(model):
    """A lone UTF-8 continuation byte in the middle decodes to U+FFFD for good: the text after it
    still streams token by token (it used to wait for the final response)."""
    tok = model.tok
    lone = tok.convert_tokens_to_ids("\u00a9")  # byte-level BPE's token for the byte 0xA9 alone
    words = tok.encode(" world and more words", add_special_tokens=False)
    ids = tok.encode("Hello", add_special_tokens=False) + [lone] + words
    assert "\ufffd" in tok.decode(ids)
    row = type(model)._handle.__globals__["_Row"](Sender(), True, [], 3)
    streamed_before_last = ""
    for n, token_id in enumerate(ids):
        model._handle(row, types.SimpleNamespace(token_id=token_id, finished=False))
        if n == len(ids) - 2:
            streamed_before_last = "".join(_text(r) for r in row.sender.responses)
    assert "\ufffd" in streamed_before_last and " world and" in streamed_before_last, streamed_before_last


def test_a_sender_that_fell_behind_sends_the_queued_tokens_in_one_response(model):
    """The engine runs ahead while the sender thread is held in its first send: once released, the
    sender answers every token already queued in one response (not one response per token), and the
    streamed text still adds up to the whole answer."""
    prompt = "Ansible provisions GPU servers and keeps them"
    whole = Request(text_input=prompt, max_tokens=48)
    model.execute([whole])
    assert whole.sender.done.wait(30)
    text = _text(whole.sender.responses[0])
    n_out = int(whole.sender.responses[0].outputs["num_output_tokens"].reshape(-1)[0])
    assert n_out >= 10 and len(text) > 10, (n_out, text)  # a long enough answer to show the batching

    gate = threading.Event()
    stream = Request(text_input=prompt, max_tokens=48, stream=True)
    stream.sender = Sender(gate)
    completed = model.engine.snapshot()["completed"]
    model.execute([stream])
    t0 = time.monotonic()
    while model.engine.snapshot()["completed"] == completed and time.monotonic() - t0 < 30:
        time.sleep(0.005)
    assert model.engine.snapshot()["completed"] > completed  # every event is queued now
    gate.set()
    assert stream.sender.done.wait(30)
    # the first token's response, one for all the tokens queued behind it, the final one
    assert len(stream.sender.responses) <= 3, len(stream.sender.responses)
    assert "".join(_text(r) for r in stream.sender.responses) == text
    final = stream.sender.responses[-1]
    assert int(final.outputs["num_output_tokens"].reshape(-1)[0]) == n_out


def test_two_ranks_answer_as_one_process(model):
    """tensor_parallel_size 2 on the CPU: the adapter starts a follower process (gloo) holding half
    of the model; the greedy answer is the one-process model's, and finalize lets the follower
    return."""
    one = Request(text_input="Ansible provisions GPU servers", max_tokens=24)
    model.execute([one])
    assert one.sender.done.wait(60)
    two_ranks = _make(tensor_parallel_size="2")
    try:
        (follower,) = two_ranks._followers
        assert follower.is_alive()
        two = Request(text_input="Ansible provisions GPU servers", max_tokens=24)
        two_ranks.execute([two])
        assert two.sender.done.wait(120)
        assert _text(two.sender.responses[0]) == _text(one.sender.responses[0])
    finally:
        two_ranks.finalize()
    assert follower.exitcode == 0
