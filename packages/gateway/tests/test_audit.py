"""Audit log: lines for requests, hash chain across rotation, tamper detection, retention."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import httpx
from conftest import KEYS

from gpuprov_gateway.audit import AuditLog, decrypt_text, load_text_key, prune, verify

MSG = [{"role": "user", "content": "hello audit"}]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuprov_gateway", *args],
                          capture_output=True, text=True, timeout=20)


def test_gateway_audit_lines_chain_and_tamper(gateway, tmp_path):
    with gateway.client() as c:
        ok = c.post("/v1/chat/completions", json={"model": "deepseek", "messages": MSG,
                                                  "temperature": 0})
        hit = c.post("/v1/chat/completions", json={"model": "deepseek", "messages": MSG,
                                                   "temperature": 0})
    bad = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "deepseek"},
                     headers={"Authorization": "Bearer nope"})
    lines = gateway.audit_lines()
    by_id = {x["request_id"]: x for x in lines}
    a = by_id[ok.headers["X-Request-Id"]]
    assert a["key_id"] == "user" and a["status"] == 200 and a["backend"] == "local"
    assert a["model"] == "deepseek" and a["client"] == "127.0.0.1"
    assert a["prompt_tokens"] > 0 and a["completion_tokens"] > 0
    assert a["ttft_ms"] is not None and a["duration_ms"] >= a["ttft_ms"]
    assert a["cache_hit"] is False and a["fallback_reason"] is None
    h = by_id[hit.headers["X-Request-Id"]]
    assert h["cache_hit"] is True and h["backend"] == "cache"
    u = by_id[bad.headers["X-Request-Id"]]
    assert u["status"] == 401 and u["key_id"] is None
    raw = "".join(p.read_text() for p in gateway.audit_dir.glob("*.jsonl"))
    assert KEYS["user"] not in raw and "hello audit" not in raw and "The answer" not in raw
    # Text is stored encrypted (store_text is on in this gateway's config).
    key = load_text_key(gateway.config["audit"]["text_key_file"])
    text = decrypt_text(key, a["request_id"], a["text_enc"])
    assert text["messages"] == MSG and text["content"] == "The answer is 42."
    for p in gateway.audit_dir.glob("*.jsonl"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o640

    r = cli("audit-verify", str(gateway.audit_dir))
    assert r.returncode == 0, r.stderr
    copy = tmp_path / "audit"
    shutil.copytree(gateway.audit_dir, copy)
    f = sorted(copy.glob("*.jsonl"))[-1]
    rows = f.read_text().splitlines()
    n = len(rows) // 2
    rows[n] = rows[n].replace('"status":200', '"status":500', 1).replace(
        '"status":401', '"status":200', 1)
    f.write_text("\n".join(rows) + "\n")
    r = cli("audit-verify", str(copy))
    assert r.returncode == 1
    assert f"{f.name}:{n + 1}" in r.stderr


def test_chain_across_daily_rotation_and_restart(tmp_path):
    day = [datetime(2026, 1, 1, 23, 59, tzinfo=UTC)]
    log = AuditLog(str(tmp_path), clock=lambda: day[0])
    log.write({"request_id": "a"})
    log.write({"request_id": "b"})
    day[0] += timedelta(minutes=2)
    log.write({"request_id": "c"})
    log.close()
    log2 = AuditLog(str(tmp_path), clock=lambda: day[0])  # restart picks the chain up
    log2.write({"request_id": "d"})
    log2.close()
    f1, f2 = sorted(tmp_path.glob("*.jsonl"))
    assert f1.name == "audit-2026-01-01.jsonl" and f2.name == "audit-2026-01-02.jsonl"
    import hashlib

    last1 = f1.read_bytes().splitlines()[-1]
    first2 = json.loads(f2.read_bytes().splitlines()[0])
    assert first2["prev"] == hashlib.sha256(last1).hexdigest()
    assert verify(str(tmp_path)).ok
    # Removing a line in the middle breaks the link of the next one.
    rows = f2.read_text().splitlines()
    f2.write_text(rows[1] + "\n")
    res = verify(str(tmp_path))
    assert not res.ok and "audit-2026-01-02.jsonl:1" in res.problem


def test_encryption_roundtrip_and_wrong_key(tmp_path):
    key = os.urandom(32)
    kf = tmp_path / "k"
    kf.write_text(base64.b64encode(key).decode())
    assert load_text_key(str(kf)) == key
    log = AuditLog(str(tmp_path / "a"), text_key=key)
    log.write({"request_id": "r1"}, {"messages": [], "content": "secret"})
    log.close()
    rec = json.loads(next((tmp_path / "a").glob("*.jsonl")).read_text())
    assert "secret" not in json.dumps(rec) and rec["text_enc"]["alg"] == "AES-256-GCM"
    assert decrypt_text(key, "r1", rec["text_enc"])["content"] == "secret"
    try:
        decrypt_text(key, "other-id", rec["text_enc"])
        raise AssertionError("AAD must bind the text to its request id")
    except Exception as e:  # cryptography's InvalidTag
        assert type(e).__name__ == "InvalidTag"


def test_retention_prune_cli(tmp_path):
    today = datetime.now(UTC).date()
    for d in (today - timedelta(days=200), today - timedelta(days=181),
              today - timedelta(days=180), today):
        (tmp_path / f"audit-{d.isoformat()}.jsonl").write_text("")
    (tmp_path / "other.txt").write_text("keep")
    assert prune(str(tmp_path), 180, today=date.fromisoformat(today.isoformat())) == [
        f"audit-{(today - timedelta(days=200)).isoformat()}.jsonl",
        f"audit-{(today - timedelta(days=181)).isoformat()}.jsonl",
    ]
    (tmp_path / "audit-2000-01-01.jsonl").write_text("")
    r = cli("audit-prune", str(tmp_path), "--retention-days", "180")
    assert r.returncode == 0 and "audit-2000-01-01.jsonl" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        f"audit-{(today - timedelta(days=180)).isoformat()}.jsonl",
        f"audit-{today.isoformat()}.jsonl", "other.txt"])
