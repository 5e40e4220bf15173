"""Append-only, hash-chained JSON-lines audit log with daily files and optional encrypted text.

Each line is a JSON object with ``prev`` (sha256 hex of the previous line's bytes,
across files: the first line of a day chains to the last line of the day before)
and ``h`` (sha256 hex of the line's own canonical JSON without ``h``). Files are
``audit-YYYY-MM-DD.jsonl``, mode 0640. Prompt/completion text is stored only when
enabled, then encrypted with AES-256-GCM (key: 32 bytes in a file, raw, hex or
base64), as ``text_enc`` = {"alg", "nonce", "ct"} with the request id as AAD.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

GENESIS = "0" * 64
FILE_RE = re.compile(r"^audit-(\d{4}-\d{2}-\d{2})\.jsonl$")
MODE = 0o640


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def load_text_key(path: str) -> bytes:
    raw = Path(path).read_bytes().strip()
    if len(raw) == 32:
        return raw
    for decode in (binascii.unhexlify, base64.b64decode):
        try:
            k = decode(raw)
        except (binascii.Error, ValueError):
            continue
        if len(k) == 32:
            return k
    raise ValueError(f"{path}: must hold a 32-byte key (raw, hex or base64)")


def encrypt_text(key: bytes, request_id: str, text: dict[str, Any]) -> dict[str, str]:
    nonce = os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, _canonical(text), request_id.encode())
    return {
        "alg": "AES-256-GCM",
        "nonce": base64.b64encode(nonce).decode(),
        "ct": base64.b64encode(ct).decode(),
    }


def decrypt_text(key: bytes, request_id: str, enc: dict[str, str]) -> dict[str, Any]:
    pt = AESGCM(key).decrypt(
        base64.b64decode(enc["nonce"]), base64.b64decode(enc["ct"]), request_id.encode()
    )
    return json.loads(pt)


def audit_files(directory: Path) -> list[tuple[date, Path]]:
    out = []
    for p in directory.iterdir() if directory.is_dir() else []:
        m = FILE_RE.match(p.name)
        if m and p.is_file():
            out.append((date.fromisoformat(m.group(1)), p))
    return sorted(out)


class AuditLog:
    def __init__(
        self, directory: str, text_key: bytes | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.clock = clock
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.text_key = text_key
        self._day: date | None = None
        self._fd: int | None = None
        self._prev = GENESIS
        files = audit_files(self.dir)
        if files:
            last = _last_line(files[-1][1])
            if last is not None:
                self._prev = _sha(last)

    def _open(self, day: date) -> int:
        if self._fd is not None and self._day == day:
            return self._fd
        if self._fd is not None:
            os.close(self._fd)
        path = self.dir / f"audit-{day.isoformat()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, MODE)
        os.fchmod(fd, MODE)
        self._fd, self._day = fd, day
        return fd

    def write(self, record: dict[str, Any], text: dict[str, Any] | None = None) -> None:
        now = self.clock()
        rec = {"time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"), **record}
        if text is not None and self.text_key is not None:
            rec["text_enc"] = encrypt_text(self.text_key, str(rec.get("request_id", "")), text)
        rec["prev"] = self._prev
        rec["h"] = _sha(_canonical(rec))
        line = _canonical(rec)
        os.write(self._open(now.date()), line + b"\n")
        self._prev = _sha(line)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def tail(self, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _, p in reversed(audit_files(self.dir)):
            lines = p.read_bytes().splitlines()
            for line in reversed(lines):
                out.append(json.loads(line))
                if len(out) >= limit:
                    return list(reversed(out))
        return list(reversed(out))


def _last_line(path: Path) -> bytes | None:
    lines = [x for x in path.read_bytes().splitlines() if x.strip()]
    return lines[-1] if lines else None


@dataclass
class VerifyResult:
    ok: bool
    lines: int
    files: int
    problem: str | None = None


def verify(directory: str) -> VerifyResult:
    """Check every line's own hash and its link to the line before, in file order.

    The first line of the oldest file present is not checked against a predecessor
    (older files may have been removed by retention), unless it is the genesis line.
    """
    files = audit_files(Path(directory))
    prev: str | None = None
    count = 0
    for _, path in files:
        for n, line in enumerate(path.read_bytes().splitlines(), start=1):
            where = f"{path.name}:{n}"
            count += 1
            try:
                rec = json.loads(line)
            except ValueError:
                return VerifyResult(False, count, len(files), f"{where}: not valid JSON")
            if not isinstance(rec, dict) or "h" not in rec or "prev" not in rec:
                return VerifyResult(False, count, len(files), f"{where}: missing prev/h fields")
            h = rec.pop("h")
            if _sha(_canonical(rec)) != h:
                return VerifyResult(False, count, len(files), f"{where}: content does not match its hash")
            if prev is not None and rec["prev"] != prev:
                return VerifyResult(
                    False, count, len(files),
                    f"{where}: prev does not match the line before (line removed or inserted)",
                )
            prev = _sha(line)
    return VerifyResult(True, count, len(files))


def prune(directory: str, retention_days: int = 180, today: date | None = None) -> list[str]:
    """Delete audit files older than retention_days; return the names removed."""
    today = today or datetime.now(UTC).date()
    cutoff = today - timedelta(days=retention_days)
    removed = []
    for day, path in audit_files(Path(directory)):
        if day < cutoff:
            path.unlink()
            removed.append(path.name)
    return removed

