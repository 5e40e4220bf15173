"""Configuration file (YAML or JSON): loading and validation with clear errors."""

from __future__ import annotations

import builtins
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True)
class RateLimit:
    capacity: float = 10.0
    refill_per_s: float = 1.0


@dataclass(frozen=True)
class KeyConfig:
    id: str
    owner: str
    hash: str
    role: str = "user"
    models: tuple[str, ...] = ("*",)
    rate: RateLimit = field(default_factory=RateLimit)
    max_concurrent: int = 4
    may_fallback: bool = False


@dataclass(frozen=True)
class ModelConfig:
    name: str
    dir: str | None = None
    context_length: int = 8192
    max_output_tokens: int = 4096
    default_max_tokens: int = 1024


@dataclass(frozen=True)
class TritonConfig:
    name: str
    url: str
    model: str


@dataclass(frozen=True)
class CloudConfig:
    name: str
    base_url: str
    api_key: str
    model: str
    model_map: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    listen: Listen
    metrics_listen: Listen
    model: ModelConfig
    aliases: dict[str, str]
    keys: tuple[KeyConfig, ...]
    local: TritonConfig | None
    hosts: tuple[TritonConfig, ...]
    cloud: tuple[CloudConfig, ...]
    fallback_enabled: bool = False
    queue_threshold: int = 8
    breaker_failures: int = 2
    breaker_cooldown_s: float = 30.0
    retry_attempts: int = 2
    retry_backoff_s: float = 0.1
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 120.0
    deadline_s: float = 600.0
    keepalive_s: float = 10.0
    cache_enabled: bool = True
    cache_max_entries: int = 1000
    cache_ttl_s: float = 900.0
    audit_dir: str | None = None
    audit_store_text: bool = False
    audit_text_key_file: str | None = None
    audit_retention_days: int = 180


_HASH_PREFIX = "sha256:"


class _Section:
    """Typed access to one mapping of the config, naming the path in errors."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def _get(self, key: str, default: Any, required: bool) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise ConfigError(f"{self.path}.{key}: is required")
            return default
        return self.data[key]

    def str(self, key: str, default: str | None = None, required: bool = False) -> Any:
        v = self._get(key, default, required)
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"{self.path}.{key}: must be a string")
        if isinstance(v, str) and required and not v:
            raise ConfigError(f"{self.path}.{key}: must not be empty")
        return v

    def num(self, key: builtins.str, default: float, minimum: float = 0.0) -> float:
        v = self._get(key, default, False)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{self.path}.{key}: must be a number")
        if v < minimum:
            raise ConfigError(f"{self.path}.{key}: must be >= {minimum}")
        return float(v)

    def int(self, key: builtins.str, default: builtins.int, minimum: builtins.int = 0) -> builtins.int:
        v = self._get(key, default, False)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.path}.{key}: must be an integer")
        if v < minimum:
            raise ConfigError(f"{self.path}.{key}: must be >= {minimum}")
        return v

    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool:
        v = self._get(key, default, False)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.path}.{key}: must be true or false")
        return v

    def section(self, key: builtins.str) -> _Section:
        return _Section(self._get(key, {}, False), f"{self.path}.{key}")

    def list(self, key: builtins.str) -> builtins.list[Any]:
        v = self._get(key, [], False)
        if not isinstance(v, list):
            raise ConfigError(f"{self.path}.{key}: must be a list")
        return v

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.path}: unknown setting(s): {', '.join(unknown)}")


def _listen(s: _Section, default_port: int) -> Listen:
    host = s.str("host", "127.0.0.1")
    port = s.int("port", default_port, 0)
    if port > 65535:
        raise ConfigError(f"{s.path}.port: must be <= 65535")
    s.done()
    return Listen(host, port)


def _secret(s: _Section) -> str:
    """A cloud API key: from a file (api_key_file) or an environment variable (api_key_env)."""
    file_ = s.str("api_key_file")
    env = s.str("api_key_env")
    if bool(file_) == bool(env):
        raise ConfigError(f"{s.path}: set exactly one of api_key_file or api_key_env")
    if file_:
        try:
            return Path(file_).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"{s.path}.api_key_file: cannot read {file_}: {e.strerror}") from e
    value = os.environ.get(env or "", "")
    if not value:
        raise ConfigError(f"{s.path}.api_key_env: environment variable {env} is not set")
    return value


def _key(s: _Section, roles: tuple[str, ...] = ("user", "admin")) -> KeyConfig:
    kid = s.str("id", required=True)
    h = s.str("hash", required=True)
    if not h.startswith(_HASH_PREFIX) or len(h) != len(_HASH_PREFIX) + 64:
        raise ConfigError(f"{s.path}.hash: must be 'sha256:' + 64 hex digits (gpuprov-gateway hash-key)")
    try:
        int(h[len(_HASH_PREFIX):], 16)
    except ValueError as e:
        raise ConfigError(f"{s.path}.hash: not hexadecimal") from e
    role = s.str("role", "user")
    if role not in roles:
        raise ConfigError(f"{s.path}.role: must be one of {', '.join(roles)}")
    models = s.list("models") or ["*"]
    if not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{s.path}.models: must be a list of model names")
    rs = s.section("rate")
    rate = RateLimit(rs.num("capacity", 10.0, 1.0), rs.num("refill_per_s", 1.0, 0.0))
    rs.done()
    kc = KeyConfig(
        id=kid,
        owner=s.str("owner", kid),
        hash=h.lower(),
        role=role,
        models=tuple(models),
        rate=rate,
        max_concurrent=s.int("max_concurrent", 4, 1),
        may_fallback=s.bool("may_fallback", False),
    )
    s.done()
    return kc


def _triton(s: _Section, default_name: str, model: str) -> TritonConfig:
    url = s.str("url", required=True).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{s.path}.url: must start with http:// or https://")
    t = TritonConfig(s.str("name", default_name), url, s.str("model", model))
    s.done()
    return t


def parse(data: Any) -> Config:
    root = _Section(data, "config")
    ms = root.section("model")
    model = ModelConfig(
        name=ms.str("name", required=True),
        dir=ms.str("dir"),
        context_length=ms.int("context_length", 8192, 16),
        max_output_tokens=ms.int("max_output_tokens", 4096, 1),
        default_max_tokens=ms.int("default_max_tokens", 1024, 1),
    )
    ms.done()
    if model.dir and not Path(model.dir).is_dir():
        raise ConfigError(f"config.model.dir: {model.dir} is not a directory")

    aliases_raw = root._get("aliases", {}, False)
    if not isinstance(aliases_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases_raw.items()
    ):
        raise ConfigError("config.aliases: must map alias names to the served model name")
    for alias, target in aliases_raw.items():
        if target != model.name:
            raise ConfigError(f"config.aliases.{alias}: must point at the served model {model.name}")

    keys: list[KeyConfig] = []
    for i, k in enumerate(root.list("keys")):
        keys.append(_key(_Section(k, f"config.keys[{i}]")))
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise ConfigError("config.keys: key ids must be unique")
    hashes = [k.hash for k in keys]
    if len(set(hashes)) != len(hashes):
        raise ConfigError("config.keys: two keys have the same hash")

    bs = root.section("backends")
    local = None
    if bs.data.get("local") is not None:
        local = _triton(bs.section("local"), "local", model.name)
    else:
        bs.used.add("local")
    hosts = tuple(
        _triton(_Section(h, f"config.backends.hosts[{i}]"), f"host{i}", model.name)
        for i, h in enumerate(bs.list("hosts"))
    )
    cloud_list = bs.list("cloud")
    if len(cloud_list) > 5:
        raise ConfigError("config.backends.cloud: at most 5 cloud endpoints")
    cloud: list[CloudConfig] = []
    for i, c in enumerate(cloud_list):
        cs = _Section(c, f"config.backends.cloud[{i}]")
        base = cs.str("base_url", required=True).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"{cs.path}.base_url: must start with http:// or https://")
        mm = cs._get("model_map", {}, False)
        if not isinstance(mm, dict):
            raise ConfigError(f"{cs.path}.model_map: must be a mapping")
        cloud.append(
            CloudConfig(
                name=cs.str("name", f"cloud{i}"),
                base_url=base,
                api_key=_secret(cs),
                model=cs.str("model", "deepseek-chat"),
                model_map={str(k): str(v) for k, v in mm.items()},
            )
        )
        cs.done()
    bs.done()
    names = [b.name for b in ([local] if local else []) + list(hosts) + cloud]
    if len(set(names)) != len(names):
        raise ConfigError("config.backends: backend names must be unique")
    if not names:
        raise ConfigError("config.backends: configure at least one backend")

    fs = root.section("fallback")
    br = root.section("breaker")
    rt = root.section("retry")
    ts = root.section("timeouts")
    cs2 = root.section("cache")
    au = root.section("audit")
    cfg = Config(
        listen=_listen(root.section("listen"), 8000),
        metrics_listen=_listen(root.section("metrics_listen"), 9400),
        model=model,
        aliases=dict(aliases_raw),
        keys=tuple(keys),
        local=local,
        hosts=hosts,
        cloud=tuple(cloud),
        fallback_enabled=fs.bool("enabled", False),
        queue_threshold=fs.int("queue_threshold", 8, 0),
        breaker_failures=br.int("failures", 2, 1),
        breaker_cooldown_s=br.num("cooldown_s", 30.0, 0.0),
        retry_attempts=rt.int("attempts", 2, 1),
        retry_backoff_s=rt.num("backoff_s", 0.1, 0.0),
        connect_timeout_s=ts.num("connect_s", 2.0, 0.01),
        read_timeout_s=ts.num("read_s", 120.0, 0.01),
        deadline_s=ts.num("deadline_s", 600.0, 0.1),
        keepalive_s=ts.num("keepalive_s", 10.0, 0.05),
        cache_enabled=cs2.bool("enabled", True),
        cache_max_entries=cs2.int("max_entries", 1000, 1),
        cache_ttl_s=cs2.num("ttl_s", 900.0, 1.0),
        audit_dir=au.str("dir"),
        audit_store_text=au.bool("store_text", False),
        audit_text_key_file=au.str("text_key_file"),
        audit_retention_days=au.int("retention_days", 180, 1),
    )
    for s in (fs, br, rt, ts, cs2, au):
        s.done()
    if cfg.audit_store_text and not cfg.audit_text_key_file:
        raise ConfigError("config.audit.text_key_file: required when audit.store_text is true")
    root.done()
    return cfg


def load(path: str) -> Config:
    """Read and validate a YAML or JSON config file; raises ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {e}") from None
    return parse(data)
