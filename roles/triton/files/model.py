"""Triton Python-backend model: the checkpoint the models role placed, behind Triton's generate
extension, with the input and output names of NVIDIA's TensorRT-LLM models (text_input, max_tokens,
temperature, top_p, top_k, stop_words, stream -> text_output), whichever engine generates:

- `transformers` (native runtime): a Hugging Face causal LM on the GPU when torch sees one, else on
  the CPU. The dynamic batcher hands execute() up to max_batch_size requests; requests with the same
  sampling settings are generated together, left-padded, in one batch.
- `llmapi` (container runtime, NGC's trtllm image): TensorRT-LLM's LLM API built from the LLM
  arguments in model.yaml beside this file (tensor parallelism, dtype, KV cache, max batch size);
  TensorRT-LLM's executor batches requests in flight.

Decoupled: a request with `stream` true gets one response per generated piece of text, any other
request exactly one response. Both engines apply the model's chat template the same way.

Latency metrics of its own (Triton's custom metrics, on the metrics port beside nv_inference_*), as
Prometheus histograms per model: time to first token (from the moment the model takes the request
to its first generated token, streaming or not) and time per output token (the mean gap between a
request's later tokens). The alert rules use these: Triton's own request duration counts whole
generations, which grow with the answer's length, not with what a user waits for.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import defaultdict

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


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


TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """A Prometheus histogram (`<name>_bucket{le}`, `_sum`, `_count`) made of the Python backend's
    counters, which Triton 2.51 offers for custom metrics (histogram_quantile reads the buckets)."""

    def __init__(self, counter_family, name, description, buckets, labels):
        # Triton 2.51 disables a family's metrics once the family object is collected: keep them.
        self.families = [counter_family(f"{name}_{part}", description, labels) for part in ("bucket", "sum", "count")]
        bucket, total, count = self.families
        self.buckets = [(b, bucket.Metric(labels={**labels, "le": repr(float(b))})) for b in buckets]
        self.inf = bucket.Metric(labels={**labels, "le": "+Inf"})
        self.sum = total.Metric(labels=labels)
        self.count = count.Metric(labels=labels)

    def observe(self, value: float) -> None:
        """Never lets a metric error fail the request it measures."""
        try:
            for bound, metric in self.buckets:
                if value <= bound:
                    metric.increment(1)
            self.inf.increment(1)
            self.sum.increment(value)
            self.count.increment(1)
        except Exception as exc:  # noqa: BLE001 - metrics are best effort
            pb_utils.Logger.log_warn(f"metric update failed: {exc}")


def _counter_family(name, description, _labels):
    return pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)


class _Row:
    """One request's generation state: text so far, what has been sent, whether it is finished, and
    when the model took it and produced its first and last token."""

    def __init__(self, request, max_tokens, stop, stream):
        self.sender = request.get_response_sender()
        self.max_tokens, self.stop, self.stream = max_tokens, stop, stream
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.done = False
        self.taken = time.monotonic()
        self.first = self.last = 0.0
        self.generated = 0


def llmapi_arguments(model_yaml: dict, model_path: str) -> dict:
    """The LLM API's keyword arguments from model.yaml: everything but Triton's own section, with the
    checkpoint path filled in."""
    args = {k: v for k, v in model_yaml.items() if k != "triton_config"}
    args.setdefault("model", model_path)
    return args


def llmapi_sampling(max_tokens: int, temperature: float, top_p: float, top_k: int, stop: list[str]) -> dict:
    """SamplingParams keyword arguments for one request (temperature 0: greedy, as in transformers)."""
    out: dict[str, object] = {"max_tokens": max_tokens, "stop": stop or None}
    if temperature > 0:
        out.update(temperature=temperature, top_p=top_p)
        if top_k > 0:
            out["top_k"] = top_k
    else:
        out.update(temperature=0.0, top_k=1)
    return out


class _TransformersEngine:
    """Hugging Face transformers: batches of rows generated together, token by token."""

    def __init__(self, model, path):
        from transformers import AutoModelForCausalLM

        self.owner = model
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.name = f"transformers on {self.device} ({dtype})"

    def generate(self, prompts, rows, temperature, top_p, top_k):
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        owner = self.owner

        class Streamer(BaseStreamer):
            """Receives each step's new tokens for the whole batch (the first call is the prompt)."""

            def __init__(self):
                self.prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                for row, tok in zip(rows, value.reshape(-1).tolist()):
                    if not row.done:
                        owner.advance(row, tok)

            def end(self):
                pass

        class RowsDone(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.tensor([r.done for r in rows], device=input_ids.device)

        tok = owner.tok
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = temperature > 0
        with torch.inference_mode():
            self.model.generate(
                **enc, max_new_tokens=max(r.max_tokens for r in rows), do_sample=sample,
                temperature=temperature if sample else None, top_p=top_p if sample else None,
                top_k=top_k if sample and top_k > 0 else None, pad_token_id=tok.pad_token_id,
                streamer=Streamer(), stopping_criteria=StoppingCriteriaList([RowsDone()]))
        owner.finish(rows)

    def close(self):
        self.model = None


class _LlmApiEngine:
    """TensorRT-LLM's LLM API: each request goes to the executor at once (in-flight batching); an
    event loop in a thread of its own collects the results and sends Triton's responses."""

    def __init__(self, model, path, model_yaml):
        from tensorrt_llm import LLM, SamplingParams

        self.owner, self.sampling_class = model, SamplingParams
        args = llmapi_arguments(model_yaml, path)
        self.llm = LLM(**args)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.name = (f"TensorRT-LLM LLM API (tensor_parallel_size {args.get('tensor_parallel_size', 1)}, "
                     f"dtype {args.get('dtype', 'auto')})")

    def generate(self, prompts, rows, temperature, top_p, top_k):
        for prompt, row in zip(prompts, rows):
            params = self.sampling_class(**llmapi_sampling(row.max_tokens, temperature, top_p, top_k, row.stop))
            asyncio.run_coroutine_threadsafe(self._one(prompt, row, params), self.loop)

    async def _one(self, prompt, row, params):
        # Token ids, so the chat template's own BOS is not doubled by the LLM API's tokenizer.
        prompt = self.owner.tok(prompt, add_special_tokens=False).input_ids
        try:
            # Streamed from the executor either way, so the first token's time is known; a request
            # that does not stream gets the whole text at the end.
            text = ""
            async for out in self.llm.generate_async(prompt, sampling_params=params, streaming=True):
                self.owner.mark_tokens(row, len(out.outputs[0].token_ids))
                piece = out.outputs[0].text_diff
                text += piece
                if piece and row.stream:
                    self.owner.send(row, piece)
            self.owner.observe_finished(row)
            if row.stream:
                row.sender.send(flags=FINAL)
            else:
                self.owner.send(row, text, flags=FINAL)
        except Exception as exc:
            self.owner.fail([row], exc)

    def close(self):
        self.llm.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        torch.manual_seed(int(params.get("seed", "0")))
        path = params["model_path"]
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.chat_template = params.get("apply_chat_template", "true") == "true" and bool(self.tok.chat_template)
        self.default_max_tokens = int(params.get("default_max_tokens", "128"))
        self.max_tokens_limit = int(params.get("max_tokens_limit", "4096"))
        labels = {"model": args["model_name"]}
        self.ttft = Histogram(_counter_family, "gpuprov_time_to_first_token_seconds",
                              "Seconds from the model taking a request to its first generated token",
                              TTFT_BUCKETS, labels)
        self.tpot = Histogram(_counter_family, "gpuprov_time_per_output_token_seconds",
                              "Mean seconds between a request's generated tokens after the first",
                              TPOT_BUCKETS, labels)
        self.engine: _LlmApiEngine | _TransformersEngine
        if params.get("engine", "transformers") == "llmapi":
            import yaml

            here = os.path.join(args["model_repository"], args["model_version"], "model.yaml")
            with open(here, encoding="utf-8") as f:
                self.engine = _LlmApiEngine(self, path, yaml.safe_load(f))
        else:
            self.engine = _TransformersEngine(self, path)
        pb_utils.Logger.log_info(f"loaded {path} with {self.engine.name}, chat template: {self.chat_template}")

    def _prompt(self, text, apply_template):
        if apply_template and self.chat_template:
            return self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)
        return text

    def advance(self, row, token):
        """Add one token to a row; send the new text if it streams; finish on EOS, stop word or length."""
        self.mark_tokens(row, row.generated + 1)
        if token == self.tok.eos_token_id:
            row.done = True
        else:
            row.tokens.append(token)
            row.text = self.tok.decode(row.tokens, skip_special_tokens=True)
            for s in row.stop:
                cut = row.text.find(s, max(0, row.sent - len(s)))
                if cut >= 0:
                    row.text, row.done = row.text[:cut], True
            if len(row.tokens) >= row.max_tokens:
                row.done = True
        # Stream only text that cannot still turn into a stop word or an incomplete character (a
        # trailing U+FFFD: the bytes of a character not all generated yet). One inside the text is
        # the model's own invalid bytes and goes out as it is, or the stream would stall until the end.
        if row.stream:
            safe = len(row.text) if row.done else min(len(row.text) - max([len(s) for s in row.stop] + [1]),
                                                      len(row.text.rstrip("\ufffd")))
            if safe > row.sent:
                self.send(row, row.text[row.sent:safe])
                row.sent = safe

    def mark_tokens(self, row, generated):
        """A row has `generated` tokens now: the first one's time goes into the TTFT histogram."""
        if generated <= row.generated:
            return
        row.last = time.monotonic()
        if row.generated == 0:
            row.first = row.last
            self.ttft.observe(row.first - row.taken)
        row.generated = generated

    def observe_finished(self, row):
        if row.generated > 1:
            self.tpot.observe((row.last - row.first) / (row.generated - 1))

    def send(self, row, text, flags=0):
        out = pb_utils.Tensor("text_output", np.array([[text.encode()]], dtype=np.object_))
        row.sender.send(pb_utils.InferenceResponse(output_tensors=[out]), flags=flags)

    def execute(self, requests):
        groups = defaultdict(list)
        for request in requests:
            try:
                text = _scalar(request, "text_input", "")
                max_tokens = int(_scalar(request, "max_tokens", self.default_max_tokens))
                if not 0 < max_tokens <= self.max_tokens_limit:
                    raise ValueError(f"max_tokens must be 1..{self.max_tokens_limit}, got {max_tokens}")
                sampling = (float(_scalar(request, "temperature", 0.0)), float(_scalar(request, "top_p", 1.0)),
                            int(_scalar(request, "top_k", 0)))
                row = _Row(request, max_tokens, _strings(request, "stop_words"), bool(_scalar(request, "stream", False)))
                prompt = self._prompt(text, bool(_scalar(request, "apply_chat_template", True)))
                groups[sampling].append((prompt, row))
            except Exception as exc:  # a bad request fails alone, not the batch
                error = pb_utils.TritonError(f"bad request: {exc}", pb_utils.TritonError.INVALID_ARG)
                request.get_response_sender().send(pb_utils.InferenceResponse(error=error), flags=FINAL)
        for (temperature, top_p, top_k), items in groups.items():
            prompts, rows = [p for p, _ in items], [r for _, r in items]
            try:
                self.engine.generate(prompts, rows, temperature, top_p, top_k)
            except Exception as exc:
                self.fail(rows, exc)
        return None

    def finish(self, rows):
        """Send what is left of each row, and the final flag."""
        for row in rows:
            self.observe_finished(row)
            if row.stream:
                if row.text[row.sent:]:
                    self.send(row, row.text[row.sent:])
                row.sender.send(flags=FINAL)
            else:
                self.send(row, row.text, flags=FINAL)

    def fail(self, rows, exc):
        for row in rows:
            row.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {exc}")),
                            flags=FINAL)

    def finalize(self):
        self.engine.close()
