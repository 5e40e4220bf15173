"""The gateway's state: config, keys, renderer, router, cache, audit log, metrics; reload."""

from __future__ import annotations

import logging

from gpuprov_gateway.audit import AuditLog, load_text_key
from gpuprov_gateway.cache import ResponseCache
from gpuprov_gateway.config import Config, ConfigError, load
from gpuprov_gateway.keys import KeyStore
from gpuprov_gateway.metrics import Metrics
from gpuprov_gateway.router import Router
from gpuprov_gateway.template import ChatRenderer, TemplateLoadError

log = logging.getLogger("gpuprov_gateway")


class Gateway:
    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.metrics = Metrics()
        self.keys = KeyStore(cfg.keys)
        self.aliases = dict(cfg.aliases)
        try:
            self.renderer = ChatRenderer(cfg.model.dir)
        except TemplateLoadError as e:
            raise ConfigError(f"config.model.dir: {e}") from e
        self.router = Router(cfg, self.metrics)
        self.cache = ResponseCache(cfg.cache_max_entries, cfg.cache_ttl_s)
        self.audit: AuditLog | None = None
        if cfg.audit_dir:
            key = None
            if cfg.audit_store_text and cfg.audit_text_key_file:
                try:
                    key = load_text_key(cfg.audit_text_key_file)
                except (OSError, ValueError) as e:
                    raise ConfigError(f"config.audit.text_key_file: {e}") from e
            try:
                self.audit = AuditLog(cfg.audit_dir, key)
            except OSError as e:
                raise ConfigError(f"config.audit.dir: {e}") from e

    def resolve(self, public_name: str) -> str | None:
        """The served model for a public name (served name itself or an alias)."""
        if public_name == self.cfg.model.name:
            return public_name
        return self.aliases.get(public_name)

    def public_models(self) -> list[str]:
        return [self.cfg.model.name, *sorted(self.aliases)]

    def reload(self) -> bool:
        """Re-read keys, aliases and the fallback switch; keep the old config when invalid."""
        if not self.config_path:
            return False
        try:
            new = load(self.config_path)
        except ConfigError as e:
            log.error("config reload failed, keeping the running config: %s", e)
            self.metrics.reloads.labels("error").inc()
            return False
        self.keys = KeyStore(new.keys, previous=self.keys)
        self.aliases = dict(new.aliases)
        self.router.fallback_enabled = new.fallback_enabled
        self.router.queue_threshold = new.queue_threshold
        self.metrics.reloads.labels("ok").inc()
        log.warning("config reloaded: %d keys", len(new.keys))
        return True

    async def close(self) -> None:
        await self.router.close()
        if self.audit:
            self.audit.close()
