"""Fixtures: real stand-in backends and real gateway processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

HERE = Path(__file__).parent
KEYS = {
    "user": "sk-test-user-0123456789abcdef",
    "admin": "sk-test-admin-0123456789abcdef",
    "limited": "sk-test-limited-0123456789abcdef",
    "bucket": "sk-test-bucket-0123456789abcdef",
    "burst": "sk-test-burst-0123456789abcdef",
    "fallback": "sk-test-fallback-0123456789abcdef",
    "other": "sk-test-other-0123456789abcdef",
    "removeme": "sk-test-removeme-0123456789abcdef",
    "streamer": "sk-test-streamer-0123456789abcdef",
    "spill": "sk-test-spill-0123456789abcdef",
}
CLOUD_KEY = "cloud-secret-for-tests"
# A DeepSeek-R1-style template: the generation prompt opens <think>.
R1_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% endif %}{% endfor %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "<｜User｜>{{ m['content'] }}{% elif m['role'] == 'assistant' %}<｜Assistant｜>"
    "{{ m['content'] }}<｜end▁of▁sentence｜>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)


def hash_of(key: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    # Generous: a process starting on a loaded CI machine is slow, and one that died fails at once.
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {url}")
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"not up in {timeout}s: {url}")


def start(args: list[str], env: dict[str, str] | None = None, log: Path | None = None):
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Standin:
    url: str
    proc: subprocess.Popen

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/admin/stats").json()


@pytest.fixture(scope="session")
def triton(tmp_path_factory) -> Standin:
    port = free_port()
    p = start([str(HERE / "standins" / "triton_standin.py"), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/health/ready", p)
    yield Standin(url, p)
    stop(p)


@pytest.fixture(scope="session")
def cloud() -> Standin:
    port = free_port()
    p = start([str(HERE / "standins" / "cloud_standin.py"), "--port", str(port)],
              env={"CLOUD_STANDIN_KEY": CLOUD_KEY})
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/admin/stats", p)
    yield Standin(url, p)
    stop(p)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny real tokenizer (WordLevel) plus a DeepSeek-R1-like chat template."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    d = tmp_path_factory.mktemp("model")
    words = ["[UNK]", "hello", "the", "answer", "is", "42", ".", "let", "me", "think", "about",
             "it", "say", "word", "cloud"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.add_special_tokens(["<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                            "<｜end▁of▁sentence｜>", "<think>", "</think>"])
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<｜begin▁of▁sentence｜>"},
        "eos_token": "<｜end▁of▁sentence｜>",
        "chat_template": R1_TEMPLATE,
    }))
    return d


def key_entry(name: str, **kw) -> dict:
    e = {"id": name, "owner": f"team-{name}", "hash": hash_of(KEYS[name]),
         "models": ["*"], "rate": {"capacity": 100, "refill_per_s": 50}, "max_concurrent": 16}
    e.update(kw)
    return e


@dataclass
class Gw:
    url: str
    metrics_url: str
    proc: subprocess.Popen
    config_path: Path
    config: dict
    audit_dir: Path
    log: Path

    def client(self, key: str = "user", **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0,
                            headers={"Authorization": f"Bearer {KEYS[key]}"}, **kw)

    def write_config(self, cfg: dict) -> None:
        self.config = cfg
        self.config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True))

    def audit_lines(self) -> list[dict]:
        out = []
        for p in sorted(self.audit_dir.glob("audit-*.jsonl")):
            out += [json.loads(x) for x in p.read_text().splitlines()]
        return out


def launch(tmp: Path, cfg: dict) -> Gw:
    port, mport = free_port(), free_port()
    cfg = {**cfg, "listen": {"host": "127.0.0.1", "port": port},
           "metrics_listen": {"host": "127.0.0.1", "port": mport}}
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    log = tmp / "gateway.log"
    p = start(["-m", "gpuprov_gateway", "serve", "--config", str(path)], log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", p)
    except RuntimeError:
        print(log.read_text())
        raise
    return Gw(url, f"http://127.0.0.1:{mport}", p, path, cfg, Path(cfg["audit"]["dir"]), log)


@pytest.fixture(scope="session")
def cloud_key_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("secrets") / "cloud.key"
    p.write_text(CLOUD_KEY + "\n")
    return p


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, triton, cloud, model_dir, cloud_key_file) -> Gw:
    tmp = tmp_path_factory.mktemp("gw")
    (tmp / "text.key").write_bytes(os.urandom(32).hex().encode())
    cfg = {
        "model": {"name": "deepseek", "dir": str(model_dir), "context_length": 256,
                  "max_output_tokens": 64, "default_max_tokens": 32},
        "aliases": {"deepseek-chat": "deepseek", "deepseek-reasoner": "deepseek"},
        "keys": [
            key_entry("user"),
            key_entry("admin", role="admin"),
            key_entry("limited", models=["deepseek-chat"]),
            key_entry("bucket", rate={"capacity": 10, "refill_per_s": 1}),
            # The burst test's: a full bucket of 10 that does not refill while 11 requests go through,
            # however slow the machine (the 1 per s refill is test_units' TokenBucket test).
            key_entry("burst", rate={"capacity": 10, "refill_per_s": 0.01}),
            key_entry("other"),
            key_entry("removeme"),
            key_entry("streamer"),
        ],
        "backends": {"local": {"url": triton.url, "model": "deepseek"},
                     "cloud": [{"name": "cloud", "base_url": f"{cloud.url}/v1",
                                "api_key_file": str(cloud_key_file), "model": "deepseek-chat"}]},
        "fallback": {"enabled": True, "queue_threshold": 100},
        "timeouts": {"keepalive_s": 0.3, "connect_s": 1.0, "read_s": 10, "deadline_s": 20},
        "retry": {"attempts": 2, "backoff_s": 0.05},
        "breaker": {"failures": 2, "cooldown_s": 0.5},
        "audit": {"dir": str(tmp / "audit"), "store_text": True,
                  "text_key_file": str(tmp / "text.key")},
    }
    gw = launch(tmp, cfg)
    yield gw
    stop(gw.proc)


@pytest.fixture(scope="session")
def down_gateway(tmp_path_factory, cloud, cloud_key_file) -> Gw:
    """Local backend on a port nobody listens on; no model dir (fallback template)."""
    tmp = tmp_path_factory.mktemp("gwdown")
    cfg = {
        "model": {"name": "deepseek", "context_length": 4096, "max_output_tokens": 256},
        "aliases": {"deepseek-chat": "deepseek"},
        "keys": [key_entry("fallback", may_fallback=True), key_entry("user")],
        "backends": {"local": {"url": f"http://127.0.0.1:{free_port()}", "model": "deepseek"},
                     "cloud": [{"name": "cloud", "base_url": f"{cloud.url}/v1",
                                "api_key_file": str(cloud_key_file), "model": "deepseek-chat"}]},
        "fallback": {"enabled": True},
        "breaker": {"failures": 2, "cooldown_s": 30},
        "retry": {"attempts": 3, "backoff_s": 0.02},
        "timeouts": {"keepalive_s": 0.3, "connect_s": 0.5, "deadline_s": 10},
        "audit": {"dir": str(tmp / "audit")},
    }
    gw = launch(tmp, cfg)
    yield gw
    stop(gw.proc)


@pytest.fixture(scope="session")
def spill_gateway(tmp_path_factory, triton, cloud, cloud_key_file) -> Gw:
    """queue_threshold 1: while one request is outstanding locally, fallback keys spill."""
    tmp = tmp_path_factory.mktemp("gwspill")
    cfg = {
        "model": {"name": "deepseek"},
        "keys": [key_entry("spill", may_fallback=True), key_entry("user")],
        "backends": {"local": {"url": triton.url},
                     "cloud": [{"name": "cloud", "base_url": f"{cloud.url}/v1",
                                "api_key_file": str(cloud_key_file)}]},
        "fallback": {"enabled": True, "queue_threshold": 1},
        "audit": {"dir": str(tmp / "audit")},
    }
    gw = launch(tmp, cfg)
    yield gw
    stop(gw.proc)
