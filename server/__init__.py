"""BigMed FHIR: a FHIR R4 server for precision medicine.

:func:`create_app` is the one place the application is assembled: configuration, store,
search registry, blueprints and the error handler. Nothing reads configuration at import time.
"""

from __future__ import annotations

import logging

from flask import Flask

from server import errors
from server.api import audit as audit_api
from server.api import auth as auth_api
from server.api import bulk as bulk_api
from server.api import cache_front
from server.api import cds as cds_api
from server.api import fhir as fhir_api
from server.api import health as health_api
from server.api import hl7v2 as hl7v2_api
from server.api import metrics as metrics_api
from server.api import ui as ui_api
from server.cache import open_cache
from server.config import Config
from server.fhir.context import FhirContext
from server.fhir.operations import rare
from server.fhir.operations.variant_ranges import VARIANT_RANGES
from server.search.registry import default_registry
from server.store import open_store

__all__ = ["create_app"]


def create_app(config: Config | None = None) -> Flask:
    """Build the WSGI app for ``config`` (default: from the environment)."""
    cfg = config or Config.from_env()
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]  # flask's default provider has it
    store = open_store(cfg.database_url, pool_size=cfg.pg_pool_size, derived=(VARIANT_RANGES,))
    cache = (
        open_cache(
            cfg.redis_url, store, cfg.cache_ttl, cfg.cache_max_bytes, cfg.cache_timeout_ms / 1000, cfg.cache_local_bytes
        )
        if cfg.cache_enabled
        else None
    )
    app.extensions["bigmed"] = FhirContext(config=cfg, store=store, registry=default_registry(), cache=cache)
    errors.init_app(app)
    auth_api.init_app(app)  # token endpoint, SMART discovery, bearer guard, rate limit, CORS, security headers
    audit_api.init_app(app)  # AuditEvent of every /fhir request (after auth: its after_request runs first)
    app.register_blueprint(fhir_api.bp)
    app.register_blueprint(bulk_api.bp)
    cds_api.init_app(app)  # CDS Hooks at /cds-services (client JWT verifier + blueprint)
    app.register_blueprint(health_api.bp)
    app.register_blueprint(hl7v2_api.bp)
    app.register_blueprint(metrics_api.bp)
    app.register_blueprint(ui_api.bp)
    cache_front.init_app(app)  # cache hits of reads and searches answered before the routes
    metrics_api.init_app(app)
    rare.warm_up(app.extensions["bigmed"])  # HPO ontology in a background thread (BIGMED_HPO_PRELOAD)
    return app
