"""Triton Python-backend model over gpuprov_engine (continuous batching, static KV cache, CUDA-graph
decode). The same inputs and outputs as roles/triton/files/model.py (text_input, max_tokens,
temperature, top_p, top_k, stop_words, stream, apply_chat_template -> text_output), plus the outputs
num_input_tokens and num_output_tokens (INT32, in every response: the counts so far).

Thin on purpose: execute() parses, tokenizes and submits each request to the engine, then returns.
The engine thread hands each token to a queue; a sender thread of this model turns tokens into text
(stop words cut, streaming only text that can no longer become a stop word or a broken character)
and sends the responses through each request's response sender. A request its client cancelled
(`response_sender.is_cancelled()`) is cancelled in the engine, which frees its slot at the next step.

Metrics (Triton custom metrics, counters and gauges, on the metrics port):
- gpuprov_time_to_first_token_seconds and gpuprov_time_per_output_token_seconds, histograms made of
  counters with the names and buckets of the role's model.py, so its alert rules apply unchanged;
- gpuprov_engine_*: generated and prompt tokens, requests, failures by reason, running sequences,
  waiting requests, KV-cache use, the engine's inter-token-latency histogram (synced once a second).

Parameters (config.pbtxt, all strings): model_path, apply_chat_template, default_max_tokens,
max_tokens_limit, seed as in the role's model; new: max_model_len, max_slots, kv_cache_bytes,
max_queue, prefill_tokens, cuda_graphs ("true"/"false"), engine_pythonpath (where gpuprov_engine
lies if it is not importable; default: `src` beside this file's version folder, then beside it),
tensor_parallel_size (default 1: above it, ranks 1..N-1 run as processes of their own on cuda:1..,
or the CPU, started here and following this process's engine: gpuprov_engine.lockstep).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# At most this many queued events are taken in one round of the sender thread.
MAX_EVENTS_PER_ROUND = 4096


def _scalar(request, name, default):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return default
    v = t.as_numpy().reshape(-1)[0]
    return v.decode() if isinstance(v, bytes) else v.item()


def _strings(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return []
    return [v.decode() if isinstance(v, bytes) else str(v) for v in t.as_numpy().reshape(-1) if v]


# Triton deletes a MetricFamily's metrics with the family object ("Invalid metric operation as the
# corresponding 'MetricFamily' has been deleted"), so every family is kept here for the model's life.
_FAMILIES: list = []


def _counter(name, description):
    family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
    _FAMILIES.append(family)
    return family


def _gauge(name, description):
    family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.GAUGE)
    _FAMILIES.append(family)
    return family


class _Histogram:
    """A Prometheus histogram (`<name>_bucket{le}`, `_sum`, `_count`) made of counters."""

    def __init__(self, name, description, buckets, labels):
        family = _counter(f"{name}_bucket", description)
        self.buckets = [(b, family.Metric(labels={**labels, "le": repr(float(b))})) for b in buckets]
        self.inf = family.Metric(labels={**labels, "le": "+Inf"})
        self.sum = _counter(f"{name}_sum", description).Metric(labels=labels)
        self.count = _counter(f"{name}_count", description).Metric(labels=labels)

    def observe(self, value: float) -> None:
        """Never raises: a metric must not fail a request."""
        try:
            for bound, metric in self.buckets:
                if value <= bound:
                    metric.increment(1)
            self.inf.increment(1)
            self.sum.increment(value)
            self.count.increment(1)
        except Exception as exc:
            pb_utils.Logger.log_warn(f"metrics: {exc}")


class _Row:
    """One request: its sender, stop words, tokens and text so far, what has been sent."""

    def __init__(self, sender, stream, stop, n_in):
        self.sender, self.stream, self.stop, self.n_in = sender, stream, stop, n_in
        self.rid = None
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.p = self.r = 0  # incremental detokenization offsets
        self.taken = time.monotonic()
        self.first = self.last = 0.0
        self.closed = False
        # Held across the final send and across each is_cancelled() of the watch thread: Triton's
        # Python backend deletes a request's response factory once its final flag is sent, and an
        # is_cancelled() after that (or one in flight meanwhile) makes Triton read the freed factory
        # (TRITONBACKEND_ResponseFactoryIsCancelled: the server dies of SIGSEGV).
        self.lock = threading.Lock()


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        here = os.path.dirname(os.path.abspath(__file__))
        extra = params.get("engine_pythonpath") or ""
        for p in [*(x for x in extra.split(":") if x), os.path.join(here, "..", "src"), os.path.join(here, "src")]:
            if os.path.isdir(os.path.join(p, "gpuprov_engine")) and p not in sys.path:
                sys.path.insert(0, p)
        import torch
        from transformers import AutoTokenizer

        from gpuprov_engine import Engine

        torch.manual_seed(int(params.get("seed", "0")))
        path = params["model_path"]
        self.tok = AutoTokenizer.from_pretrained(path)
        self.chat_template = params.get("apply_chat_template", "true") == "true" and bool(self.tok.chat_template)
        self.default_max_tokens = int(params.get("default_max_tokens", "128"))

        def opt(name, cast=int):
            v = params.get(name, "")
            return cast(v) if v != "" else None

        kw = {k: v for k, v in {
            "max_model_len": opt("max_model_len"), "max_slots": opt("max_slots"),
            "kv_cache_bytes": opt("kv_cache_bytes"), "max_queue": opt("max_queue"),
            "prefill_tokens": opt("prefill_tokens"), "seed": opt("seed"),
            "cuda_graphs": opt("cuda_graphs", lambda s: s.lower() == "true"),
        }.items() if v is not None}
        max_model_len = kw.get("max_model_len") or 4096
        limit = min(int(params.get("max_tokens_limit", "4096")), max_model_len - 1)
        self._followers = []
        tp = int(params.get("tensor_parallel_size") or "1")
        if tp > 1:
            from gpuprov_engine import lockstep

            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            # In the Python backend sys.executable is the stub: the ranks run the venv's Python.
            self._followers = lockstep.start_followers(
                path, tp, device=device, dtype=dtype, python=os.path.join(sys.exec_prefix, "bin", "python3"))
            kw.update(tp_rank=0, tp_size=tp, announce=True, dtype=dtype)
        self.engine = Engine(path, tokenizer=self.tok, max_tokens_limit=limit, **kw)
        self.max_tokens_limit = self.engine.max_tokens_limit

        labels = {"model": args["model_name"]}
        self.ttft = _Histogram("gpuprov_time_to_first_token_seconds",
                               "Seconds from the model taking a request to its first generated token",
                               TTFT_BUCKETS, labels)
        self.tpot = _Histogram("gpuprov_time_per_output_token_seconds",
                               "Mean seconds between a request's generated tokens after the first",
                               TPOT_BUCKETS, labels)
        self._labels = labels
        self._m = {
            "generated": _counter("gpuprov_engine_generated_tokens_total", "Tokens generated").Metric(labels=labels),
            "prompt": _counter("gpuprov_engine_prompt_tokens_total", "Prompt tokens accepted").Metric(labels=labels),
            "requests": _counter("gpuprov_engine_requests_total", "Requests accepted").Metric(labels=labels),
            "running": _gauge("gpuprov_engine_running_sequences", "Sequences in the running batch").Metric(
                labels=labels),
            "waiting": _gauge("gpuprov_engine_waiting_requests", "Requests waiting for a slot").Metric(labels=labels),
            "kv": _gauge("gpuprov_engine_kv_cache_usage_ratio", "Used share of the KV cache's token positions").Metric(
                labels=labels),
        }
        self._fail_family = _counter("gpuprov_engine_failures_total", "Requests refused or ended early, by reason")
        self._fails: dict[str, object] = {}
        itl = _counter("gpuprov_engine_inter_token_seconds_bucket", "Seconds between a sequence's tokens")
        self._itl_buckets = None
        self._itl_family = itl
        self._itl_sum = _counter("gpuprov_engine_inter_token_seconds_sum", "Seconds between tokens").Metric(
            labels=labels)
        self._itl_count = _counter("gpuprov_engine_inter_token_seconds_count", "Seconds between tokens").Metric(
            labels=labels)
        self._last = {}

        self._events: queue.Queue = queue.Queue()
        self._rows: dict[str, _Row] = {}
        self._rows_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True, name=n) for f, n in (
            (self._send_loop, "gpuprov-sender"), (self._watch_loop, "gpuprov-watch"))]
        for t in self._threads:
            t.start()
        pb_utils.Logger.log_info(
            f"loaded {path} with gpuprov_engine on {self.engine.device} ({self.engine.dtype}): "
            f"{self.engine.num_slots} slots of {self.engine.max_model_len} tokens, "
            f"{len(self.engine._graphs)} CUDA graphs, chat template: {self.chat_template}")

    # -- requests ----------------------------------------------------------------------------------
    def _prompt(self, text, apply_template):
        if apply_template and self.chat_template:
            return self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)
        return text

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                text = _scalar(request, "text_input", "")
                max_tokens = int(_scalar(request, "max_tokens", self.default_max_tokens))
                if not 0 < max_tokens <= self.max_tokens_limit:
                    raise ValueError(f"max_tokens must be 1..{self.max_tokens_limit}, got {max_tokens}")
                prompt = self._prompt(text, bool(_scalar(request, "apply_chat_template", True)))
                ids = self.tok(prompt, add_special_tokens=False).input_ids
                stop = _strings(request, "stop_words")
                row = _Row(sender, bool(_scalar(request, "stream", False)), stop, len(ids))
                with self._rows_lock:
                    row.rid = self.engine.submit(
                        ids, max_tokens=max_tokens, temperature=float(_scalar(request, "temperature", 0.0)),
                        top_p=float(_scalar(request, "top_p", 1.0)), top_k=int(_scalar(request, "top_k", 0)),
                        stop_strings=stop, on_token=lambda ev, r=row: self._events.put((r, ev)))
                    self._rows[row.rid] = row
            except Exception as exc:  # a bad request (or a full queue) fails alone
                code = pb_utils.TritonError.INVALID_ARG
                if type(exc).__name__ == "QueueFullError":
                    code = getattr(pb_utils.TritonError, "UNAVAILABLE", pb_utils.TritonError.INTERNAL)
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad request: {exc}", code)),
                            flags=FINAL)
        return None

    # -- the sender thread -------------------------------------------------------------------------
    def _response(self, row, text, n_out):
        outs = [pb_utils.Tensor("text_output", np.array([[text.encode()]], dtype=np.object_)),
                pb_utils.Tensor("num_input_tokens", np.array([[row.n_in]], dtype=np.int32)),
                pb_utils.Tensor("num_output_tokens", np.array([[n_out]], dtype=np.int32))]
        return pb_utils.InferenceResponse(output_tensors=outs)

    def _send_loop(self):
        """Takes every event already queued at once and answers each request once per round: when the
        engine runs ahead of this thread (many streams), several tokens go out in one response, so the
        responses per second stay what this thread can send; when it keeps up, a token per response."""
        while not self._stop.is_set():
            try:
                batch = [self._events.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < MAX_EVENTS_PER_ROUND:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            by_row: dict[int, tuple[_Row, list]] = {}
            for row, ev in batch:
                by_row.setdefault(id(row), (row, []))[1].append(ev)
            for row, events in by_row.values():
                try:
                    self._handle_events(row, events)
                except Exception as exc:  # the client went away, or a send failed
                    self._fail(row, exc)

    def _fail(self, row, exc):
        pb_utils.Logger.log_warn(f"request {row.rid}: {exc}")
        self.engine.cancel(row.rid)
        with row.lock:
            if row.closed:
                return
            self._drop(row)
            try:  # end the request for the client, whatever happened
                err = pb_utils.TritonError(f"generation failed: {exc}")
                row.sender.send(pb_utils.InferenceResponse(error=err), flags=FINAL)
            except Exception:
                pass

    def _handle(self, row, ev):
        self._handle_events(row, [ev])

    def _handle_events(self, row, events):
        """One request's events of this round, in order: tokens are recorded, a final event ends the
        request, and a stream gets one response with all the text that became safe to send.
        Cancellation is the watch thread's (an is_cancelled() per token is a round trip to Triton)."""
        if row.closed:
            return
        now = time.monotonic()
        for ev in events:
            if ev.token_id is not None:
                row.last = now
                if not row.tokens:
                    row.first = now
                    self.ttft.observe(now - row.taken)
                row.tokens.append(ev.token_id)
            if ev.finished:
                self._finish(row, ev.result)
                return
        if row.stream:
            self._detokenize(row)
            safe = len(row.text) - max([len(s) for s in row.stop] + [1])
            # _detokenize adds no text that ends in an incomplete character; a U+FFFD inside the text
            # is the model's own invalid bytes and goes out as it is (else the stream stalls to the end).
            if safe > row.sent:
                row.sender.send(self._response(row, row.text[row.sent:safe], len(row.tokens)))
                row.sent = safe

    def _detokenize(self, row):
        """Incremental: decode only the tokens since the last-but-one update (byte-level BPE), and add
        text once it no longer ends in an incomplete character."""
        prefix = self.tok.decode(row.tokens[row.p:row.r], skip_special_tokens=True)
        full = self.tok.decode(row.tokens[row.p:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            row.text += full[len(prefix):]
            row.p, row.r = row.r, len(row.tokens)

    def _finish(self, row, res):
        with row.lock:
            self._drop(row)
            self._send_final(row, res)

    def _send_final(self, row, res):
        """The request's last response (under its lock: see _Row.lock)."""
        if len(row.tokens) > 1:
            self.tpot.observe((row.last - row.first) / (len(row.tokens) - 1))
        if res.finish_reason == "cancelled" and row.sender.is_cancelled():
            row.sender.send(flags=FINAL)
            return
        if res.finish_reason in ("error", "cancelled"):
            err = pb_utils.TritonError(f"generation {res.finish_reason}: {res.error or ''}".strip())
            row.sender.send(pb_utils.InferenceResponse(error=err), flags=FINAL)
            return
        text = self.tok.decode(row.tokens, skip_special_tokens=True)
        if isinstance(res.stop, str):
            cut = text.find(res.stop)
            text = text[:cut] if cut >= 0 else text
        if row.stream:
            row.sender.send(self._response(row, text[row.sent:], res.num_output_tokens), flags=FINAL)
        else:
            row.sender.send(self._response(row, text, res.num_output_tokens), flags=FINAL)

    def _drop(self, row):
        row.closed = True
        with self._rows_lock:
            self._rows.pop(row.rid, None)

    # -- the watch thread: client cancellations, metrics -------------------------------------------
    def _watch_loop(self):
        next_sync = 0.0
        while not self._stop.wait(0.05):
            with self._rows_lock:
                rows = list(self._rows.values())
            for row in rows:
                try:
                    with row.lock:  # never after (or during) the final send: see _Row.lock
                        cancelled = not row.closed and row.sender.is_cancelled()
                    if cancelled:
                        self.engine.cancel(row.rid)
                except Exception:
                    pass
            if time.monotonic() >= next_sync:
                next_sync = time.monotonic() + 1.0
                try:
                    self._sync_metrics()
                except Exception as exc:
                    pb_utils.Logger.log_warn(f"metrics: {exc}")

    def _delta(self, key, value):
        d = value - self._last.get(key, 0)
        self._last[key] = value
        return d

    def _sync_metrics(self):
        s = self.engine.snapshot()
        m = self._m
        for key, name in (("generated", "generated_tokens"), ("prompt", "prompt_tokens"), ("requests", "requests")):
            d = self._delta(name, s[name])
            if d:
                m[key].increment(d)
        m["running"].set(s["running"])
        m["waiting"].set(s["waiting"])
        m["kv"].set(s["kv_usage"])
        for reason, n in s["failures"].items():
            if reason not in self._fails:
                self._fails[reason] = self._fail_family.Metric(labels={**self._labels, "reason": reason})
            d = self._delta(("fail", reason), n)
            if d:
                self._fails[reason].increment(d)
        h = s["inter_token_seconds"]
        if self._itl_buckets is None:
            les = [repr(float(b)) for b in h["bounds"]] + ["+Inf"]
            self._itl_buckets = [self._itl_family.Metric(labels={**self._labels, "le": le}) for le in les]
        for i, (metric, n) in enumerate(zip(self._itl_buckets, h["cumulative"])):
            d = self._delta(("itl", i), n)
            if d:
                metric.increment(d)
        d = self._delta("itl_sum", h["sum"])
        if d:
            self._itl_sum.increment(d)
        d = self._delta("itl_count", h["count"])
        if d:
            self._itl_count.increment(d)

    def finalize(self):
        self.engine.shutdown()  # with tensor parallelism, this also lets the follower ranks return
        for p in self._followers:
            p.join(30)
        if self._followers:
            import torch.distributed as dist

            dist.destroy_process_group()
        self._stop.set()
        for t in self._threads:
            t.join(2)
