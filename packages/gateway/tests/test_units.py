"""Small pieces: think splitting, stop matching, breaker, bucket, config errors, CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpuprov_gateway.breaker import CircuitBreaker
from gpuprov_gateway.config import ConfigError, parse
from gpuprov_gateway.keys import TokenBucket, hash_key
from gpuprov_gateway.reasoning import StopMatcher, ThinkSplitter
from gpuprov_gateway.template import ChatRenderer


def split_all(pieces: list[str], starts_in_think: bool) -> tuple[str, str]:
    s = ThinkSplitter(starts_in_think)
    r, c = "", ""
    for p in pieces:
        a, b = s.feed(p)
        r, c = r + a, c + b
    a, b = s.flush()
    return r + a, c + b


@pytest.mark.parametrize("pieces,opened,expected", [
    (["<think>", "why", "</think>", "\n\n", "answer"], False, ("why", "answer")),
    (["<th", "ink>\nwhy not", "</th", "ink>ans", "wer"], False, ("why not", "answer")),
    (["why\n", "</think>\n\nanswer"], True, ("why", "answer")),
    (["<think>\n", "why", "</think>answer"], True, ("why", "answer")),
    (["plain answer"], False, ("", "plain answer")),
    (["still thinking"], True, ("still thinking", "")),
    (["a </think> b"], False, ("", "a </think> b")),
])
def test_think_splitter(pieces, opened, expected):
    assert split_all(pieces, opened) == expected
    # Character by character gives the same result.
    assert split_all(list("".join(pieces)), opened) == expected


def test_stop_matcher_across_pieces():
    m = StopMatcher(["STOP", "halt"])
    out = m.feed("abc ST") + m.feed("OP def")
    assert out == "abc " and m.stopped
    m = StopMatcher(["xyz"])
    assert m.feed("abcx") + m.feed("y") + m.flush() == "abcxy"


def test_breaker_half_open():
    b = CircuitBreaker(2, 10)
    b.failure(now=0)
    assert b.allow(now=0)
    b.failure(now=0)
    assert not b.allow(now=5) and b.retry_in(now=5) == 5
    assert b.allow(now=10)  # one probe
    assert not b.allow(now=10)
    b.failure(now=10)
    assert b.state == "open" and not b.allow(now=11)
    assert b.allow(now=21)
    b.success()
    assert b.state == "closed" and b.allow(now=21)


def test_token_bucket_defaults():
    b = TokenBucket(10, 1)
    assert [b.take(now=b.stamp) for _ in range(10)] == [0.0] * 10
    assert b.take(now=b.stamp) == pytest.approx(1.0)
    assert b.take(now=b.stamp + 1.0) == 0.0


def test_fallback_template_without_model_dir():
    r = ChatRenderer(None)
    p = r.render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert p == "<|system|>\ns\n<|user|>\nu\n<|assistant|>\n"
    assert r.count("abcdefgh") == 2


GOOD = {"model": {"name": "deepseek"}, "backends": {"local": {"url": "http://127.0.0.1:1"}}}


@pytest.mark.parametrize("mutate,message", [
    (lambda c: c.pop("model"), "config.model.name: is required"),
    (lambda c: c.update(keys=[{"id": "a", "hash": "plain"}]), "config.keys[0].hash"),
    (lambda c: c.update(bogus=1), "unknown setting(s): bogus"),
    (lambda c: c.update(aliases={"x": "other"}), "config.aliases.x"),
    (lambda c: c["backends"].update(local={"url": "ftp://x"}), "config.backends.local.url"),
    (lambda c: c.update(fallback={"enabled": "yes"}), "config.fallback.enabled"),
    (lambda c: c["backends"].update(cloud=[{"base_url": "http://x", "api_key_env": "NOPE_X"}]),
     "NOPE_X is not set"),
])
def test_config_errors(mutate, message):
    import copy

    cfg = copy.deepcopy(GOOD)
    mutate(cfg)
    with pytest.raises(ConfigError) as e:
        parse(cfg)
    assert message in str(e.value)


def test_config_defaults_are_the_requirements():
    cfg = parse({**GOOD, "keys": [{"id": "k", "hash": hash_key("x")}]})
    k = cfg.keys[0]
    assert (k.rate.capacity, k.rate.refill_per_s) == (10, 1)
    assert (cfg.cache_max_entries, cfg.cache_ttl_s) == (1000, 900)
    assert (cfg.breaker_failures, cfg.audit_retention_days) == (2, 180)
    assert cfg.fallback_enabled is False and k.may_fallback is False


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuprov_gateway", *args], input=stdin,
                          capture_output=True, text=True, timeout=20)


def test_cli_hash_key_and_bad_config(tmp_path):
    r = run_cli("hash-key", stdin="sk-abc\n")
    assert r.returncode == 0 and r.stdout.strip() == hash_key("sk-abc")
    r = run_cli("hash-key", "--generate")
    key = r.stdout.split()[1]
    assert r.stdout.split()[3] == hash_key(key)
    bad = tmp_path / "c.yaml"
    bad.write_text("model: [unclosed\n")
    r = run_cli("serve", "--config", str(bad))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and "Traceback" not in r.stderr
    bad.write_text("model: {name: deepseek}\nbackends: {}\n")
    r = run_cli("serve", "--config", str(bad))
    assert r.returncode == 2 and "at least one backend" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("serve", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "cannot read config file" in r.stderr


def test_pump_ready_hands_over_what_piled_up_without_waiting():
    """The stream writer merges deltas that are already queued: ready() returns them in order, then
    END, and None when nothing waits; a generator's exception comes out of ready() in its place."""
    import asyncio

    from gpuprov_gateway.pump import END, Pump

    async def gen(fail: bool):  # noqa: ANN202
        for i in range(3):
            yield i
        if fail:
            raise RuntimeError("backend broke")

    async def main() -> None:
        p = Pump(gen(False))
        assert await p.next(None) == 0  # the producer ran to its end meanwhile (nothing awaits)
        assert [p.ready(), p.ready(), p.ready()] == [1, 2, END]
        assert p.ready() is None
        await p.close()
        p = Pump(gen(True))
        assert await p.next(None) == 0
        assert [p.ready(), p.ready()] == [1, 2]
        with pytest.raises(RuntimeError, match="backend broke"):
            p.ready()
        await p.close()

        async def slow():  # noqa: ANN202
            yield "a"
            await asyncio.sleep(10)
            yield "b"

        p = Pump(slow())
        assert await p.next(None) == "a"
        assert p.ready() is None  # never waits
        await p.close()

    asyncio.run(main())



def test_reasoning_and_content_never_share_a_chunk():
    from gpuprov_gateway.app import _deltas

    assert _deltas("why", "answer") == [{"reasoning_content": "why"}, {"content": "answer"}]
    assert _deltas("", "answer") == [{"content": "answer"}]
    assert _deltas("why", "") == [{"reasoning_content": "why"}]
    assert _deltas("", "") == []
