"""Configuration: the ONLY module that reads the environment.

Every setting has a default that makes ``make run`` work on a fresh machine (SQLite file under
``var/``, in-process cache, open sandbox auth). ``Config.from_env`` reads ``os.environ`` once,
when the app factory or the CLI asks for it; nothing reads configuration at import time.
The README's configuration table lists the same names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Config"]


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Config:
    """Settings of one running server (immutable; tests build their own with ``replace``)."""

    database_url: str = "sqlite:///var/bigmed.sqlite"
    redis_url: str | None = None
    base_url: str | None = None
    auth: str = "open"
    max_body_bytes: int = 16 * 1024 * 1024
    max_vcf_bytes: int = 2 * 1024 * 1024 * 1024  # $ingest-vcf uploads (instead of max_body_bytes)
    vcf_async_bytes: int = 8 * 1024 * 1024  # larger $ingest-vcf uploads are ingested in the background (202)
    max_json_depth: int = 64
    validation: str = "strict"
    default_page_size: int = 50
    max_page_size: int = 1000
    max_bundle_entries: int = 10_000
    pg_pool_size: int = 8
    log_level: str = "INFO"
    cache_ttl: int = 300
    cache_max_bytes: int = 1_048_576
    cache_timeout_ms: int = 50
    cache_enabled: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        cfg = cls(
            database_url=env.get("DATABASE_URL") or cls.database_url,
            redis_url=env.get("REDIS_URL") or None,
            base_url=(env.get("BIGMED_BASE_URL") or "").rstrip("/") or None,
            auth=env.get("BIGMED_AUTH") or cls.auth,
            max_body_bytes=_int(env, "BIGMED_MAX_BODY_BYTES", cls.max_body_bytes),
            max_vcf_bytes=_int(env, "BIGMED_MAX_VCF_BYTES", cls.max_vcf_bytes),
            vcf_async_bytes=_int(env, "BIGMED_VCF_ASYNC_BYTES", cls.vcf_async_bytes),
            max_json_depth=_int(env, "BIGMED_MAX_JSON_DEPTH", cls.max_json_depth),
            validation=env.get("BIGMED_VALIDATION") or cls.validation,
            default_page_size=_int(env, "BIGMED_PAGE_SIZE", cls.default_page_size),
            max_page_size=_int(env, "BIGMED_MAX_PAGE_SIZE", cls.max_page_size),
            max_bundle_entries=_int(env, "BIGMED_MAX_BUNDLE_ENTRIES", cls.max_bundle_entries),
            pg_pool_size=_int(env, "BIGMED_PG_POOL_SIZE", cls.pg_pool_size),
            log_level=env.get("BIGMED_LOG_LEVEL") or cls.log_level,
            cache_ttl=_int(env, "BIGMED_CACHE_TTL", cls.cache_ttl),
            cache_max_bytes=_int(env, "BIGMED_CACHE_MAX_BYTES", cls.cache_max_bytes),
            cache_timeout_ms=_int(env, "BIGMED_CACHE_TIMEOUT_MS", cls.cache_timeout_ms),
            cache_enabled=(env.get("BIGMED_CACHE") or "on").lower() not in ("off", "0", "false", "no"),
        )
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.auth not in ("open", "smart"):
            raise ValueError(f"BIGMED_AUTH must be 'open' or 'smart', got {self.auth!r}")
        if self.validation not in ("strict", "lenient"):
            raise ValueError(f"BIGMED_VALIDATION must be 'strict' or 'lenient', got {self.validation!r}")
        if not self.database_url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("DATABASE_URL must start with sqlite:// or postgresql://")

    def with_(self, **changes: Any) -> Config:
        """A copy with some settings changed (used by tests and the CLI)."""
        new = replace(self, **changes)
        new.check()
        return new
