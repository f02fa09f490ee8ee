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
    cache_local_bytes: int = 32 * 1024 * 1024  # in-process tier of the query cache, per worker (server/cache.py)
    metrics_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR: /metrics sums every worker (set by serve --workers)
    export_dir: str = "var/exports"  # Bulk Data $export files and job state (shared by every worker)
    export_ttl: int = 86_400  # seconds an export's files are kept after it ends
    export_max_lines: int = 100_000  # NDJSON lines per export file (more: the next file of the type)
    export_max_jobs: int = 4  # exports running at once; more kick-offs get 429
    token_ttl: int = 300  # seconds an access token from /auth/token lives (server/auth/token.py)
    token_key_file: str | None = None  # PEM key signing access tokens; unset: generated, kept in the database
    audit: bool = True  # AuditEvent trail of every access to patient data (server/audit.py)
    audit_mode: str = "async"  # "async": group-commit queue, fails closed (server/audit_queue.py); "sync"
    audit_queue: int = 10_000  # async mode: audit records waiting at most; beyond, requests get 503
    rate_limit: int = 600  # requests per client per minute (0: off); 429 + Retry-After beyond
    cors_origins: tuple[str, ...] = ()  # browser origins allowed by CORS ("*": any); empty: none
    cds_jwt: str = "required"  # CDS Hooks client JWT: "required" (every call) or "off" (only with auth open)
    cds_issuers: tuple[str, ...] = ()  # accepted CDS client JWT issuers (iss)
    cds_jku_allow: tuple[str, ...] = ()  # JWKS URLs (jku) CDS client keys may be fetched from
    cds_jwks_file: str | None = None  # a static JWK Set of trusted CDS client keys
    cds_fetch_timeout_ms: int = 3000  # connect/read timeout of CDS prefetch fetches from fhirServer
    cds_rare_budget_ms: int = 1500  # genomic-findings: wait at most this for the candidate-gene ranking
    hpo_preload: str = "auto"  # load the HPO ontology at app start: "auto" (if HPO phenotypes are stored), on, off
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
            cache_local_bytes=_int(env, "BIGMED_CACHE_LOCAL_BYTES", cls.cache_local_bytes),
            metrics_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
            export_dir=env.get("BIGMED_EXPORT_DIR") or cls.export_dir,
            export_ttl=_int(env, "BIGMED_EXPORT_TTL", cls.export_ttl),
            export_max_lines=_int(env, "BIGMED_EXPORT_MAX_LINES", cls.export_max_lines),
            export_max_jobs=_int(env, "BIGMED_EXPORT_MAX_JOBS", cls.export_max_jobs),
            cache_enabled=(env.get("BIGMED_CACHE") or "on").lower() not in ("off", "0", "false", "no"),
            token_ttl=_int(env, "BIGMED_TOKEN_TTL", cls.token_ttl),
            token_key_file=env.get("BIGMED_TOKEN_KEY_FILE") or None,
            audit=(env.get("BIGMED_AUDIT") or "on").lower() not in ("off", "0", "false", "no"),
            audit_mode=(env.get("BIGMED_AUDIT_MODE") or cls.audit_mode).lower(),
            audit_queue=_int(env, "BIGMED_AUDIT_QUEUE", cls.audit_queue),
            rate_limit=_int(env, "BIGMED_RATE_LIMIT", cls.rate_limit),
            cds_jwt=(env.get("BIGMED_CDS_JWT") or cls.cds_jwt).lower(),
            cds_issuers=tuple(x.strip() for x in env.get("BIGMED_CDS_ISSUERS", "").split(",") if x.strip()),
            cds_jku_allow=tuple(x.strip() for x in env.get("BIGMED_CDS_JKU_ALLOW", "").split(",") if x.strip()),
            cds_jwks_file=env.get("BIGMED_CDS_JWKS_FILE") or None,
            cds_fetch_timeout_ms=_int(env, "BIGMED_CDS_FETCH_TIMEOUT_MS", cls.cds_fetch_timeout_ms),
            cds_rare_budget_ms=_int(env, "BIGMED_CDS_RARE_BUDGET_MS", cls.cds_rare_budget_ms),
            hpo_preload=(env.get("BIGMED_HPO_PRELOAD") or cls.hpo_preload).lower(),
            cors_origins=tuple(
                o.strip().rstrip("/") for o in env.get("BIGMED_CORS_ORIGINS", "").split(",") if o.strip()
            ),
        )
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.auth not in ("open", "smart"):
            raise ValueError(f"BIGMED_AUTH must be 'open' or 'smart', got {self.auth!r}")
        if self.validation not in ("strict", "lenient"):
            raise ValueError(f"BIGMED_VALIDATION must be 'strict' or 'lenient', got {self.validation!r}")
        if self.export_max_lines < 1 or self.export_max_jobs < 1 or self.export_ttl < 1:
            raise ValueError("BIGMED_EXPORT_MAX_LINES, BIGMED_EXPORT_MAX_JOBS and BIGMED_EXPORT_TTL must be positive")
        if not 10 <= self.token_ttl <= 3600:
            raise ValueError(f"BIGMED_TOKEN_TTL must be between 10 and 3600 seconds, got {self.token_ttl}")
        if self.audit_mode not in ("async", "sync") or self.audit_queue < 1:
            raise ValueError("BIGMED_AUDIT_MODE must be 'async' or 'sync' and BIGMED_AUDIT_QUEUE positive")
        if self.rate_limit < 0:
            raise ValueError(f"BIGMED_RATE_LIMIT must be 0 (off) or positive, got {self.rate_limit}")
        if self.cds_jwt not in ("required", "off") or (self.cds_jwt == "off" and self.auth != "open"):
            raise ValueError("BIGMED_CDS_JWT must be 'required', or 'off' with BIGMED_AUTH=open")
        if self.hpo_preload not in ("auto", "on", "off"):
            raise ValueError(f"BIGMED_HPO_PRELOAD must be 'auto', 'on' or 'off', got {self.hpo_preload!r}")
        if self.cds_rare_budget_ms < 0:
            raise ValueError(f"BIGMED_CDS_RARE_BUDGET_MS must be 0 or positive, got {self.cds_rare_budget_ms}")
        if not self.database_url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("DATABASE_URL must start with sqlite:// or postgresql://")

    def with_(self, **changes: Any) -> Config:
        """A copy with some settings changed (used by tests and the CLI)."""
        new = replace(self, **changes)
        new.check()
        return new
