"""Database schema, shared by SQLite and PostgreSQL, and its migration at start-up.

Tables (one DDL text, rendered per dialect):

``resources``  the current version of each resource: ``rid`` (surrogate key), ``res_type``,
               ``res_id``, ``version``, ``ts`` (lastUpdated, UTC epoch seconds), ``deleted``.
``history``    every version, ``seq`` ordered: ``rid``, ``res_type``, ``res_id``, ``version``,
               ``ts``, ``deleted``, ``method``, ``content`` (the JSON served, JSONB on
               PostgreSQL, the exact bytes on SQLite; NULL for a delete tombstone), ``raw``
               (PostgreSQL only, and only when JSONB would print a number differently from
               the client, e.g. ``1.0E+245``: the exact bytes, served instead). The current
               content is read by joining ``resources`` to ``history`` on (rid, version), so
               it is written once.
``idx_token``, ``idx_string``, ``idx_reference``, ``idx_date``, ``idx_number``,
``idx_quantity``, ``idx_uri``
               one search index table per search-parameter type
               (http://hl7.org/fhir/R4/search.html#ptypes), keyed by (param, res_type,
               normalised value, rid), holding rows for current, non-deleted versions only:

               token      system, code, text (display/text, for ``:text``)
               string     value (lower-cased, accents stripped), exact (as written)
               reference  target_type, target_id, url (the reference as written)
               date       low, high: half-open UTC epoch interval [low, high)
               number     value
               quantity   value, system, code, unit
               uri        value

``schema_meta`` one row: the schema version; :func:`migrate` brings any older database up.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "ddl"]

SCHEMA_VERSION = 1

_TYPES = {
    "sqlite": {
        "pk": "INTEGER PRIMARY KEY",
        "json": "BLOB",
        "blob": "BLOB",
        "real": "REAL",
        "num": "REAL",
        "bigint": "INTEGER",
    },
    "postgresql": {
        "pk": "BIGSERIAL PRIMARY KEY",
        "json": "JSONB",
        "blob": "BYTEA",
        "real": "DOUBLE PRECISION",
        "num": "NUMERIC",
        "bigint": "BIGINT",
    },
}

_DDL = """
CREATE TABLE IF NOT EXISTS schema_meta (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    rid {pk},
    res_type TEXT NOT NULL,
    res_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    ts {real} NOT NULL,
    deleted SMALLINT NOT NULL DEFAULT 0,
    UNIQUE (res_type, res_id)
);
CREATE INDEX IF NOT EXISTS resources_type_ts ON resources (res_type, ts);
CREATE TABLE IF NOT EXISTS history (
    seq {pk},
    rid {bigint} NOT NULL,
    res_type TEXT NOT NULL,
    res_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    ts {real} NOT NULL,
    deleted SMALLINT NOT NULL DEFAULT 0,
    method TEXT NOT NULL,
    content {json},
    raw {blob},
    UNIQUE (rid, version)
);
CREATE INDEX IF NOT EXISTS history_type_seq ON history (res_type, seq);
CREATE INDEX IF NOT EXISTS history_ts ON history (ts);
CREATE TABLE IF NOT EXISTS idx_token (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL,
    system TEXT, code TEXT, text TEXT
);
CREATE INDEX IF NOT EXISTS idx_token_value ON idx_token (param, res_type, code, system);
CREATE INDEX IF NOT EXISTS idx_token_rid ON idx_token (rid);
CREATE TABLE IF NOT EXISTS idx_string (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL,
    value TEXT NOT NULL, exact TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_string_value ON idx_string (param, res_type, value);
CREATE INDEX IF NOT EXISTS idx_string_rid ON idx_string (rid);
CREATE TABLE IF NOT EXISTS idx_reference (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL,
    target_type TEXT, target_id TEXT, url TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_reference_value ON idx_reference (param, res_type, target_id, target_type);
CREATE INDEX IF NOT EXISTS idx_reference_target ON idx_reference (target_type, target_id);
CREATE INDEX IF NOT EXISTS idx_reference_rid ON idx_reference (rid);
CREATE TABLE IF NOT EXISTS idx_date (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL,
    low {real} NOT NULL, high {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_date_value ON idx_date (param, res_type, low, high);
CREATE INDEX IF NOT EXISTS idx_date_rid ON idx_date (rid);
CREATE TABLE IF NOT EXISTS idx_number (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL, value {num} NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_number_value ON idx_number (param, res_type, value);
CREATE INDEX IF NOT EXISTS idx_number_rid ON idx_number (rid);
CREATE TABLE IF NOT EXISTS idx_quantity (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL,
    value {num} NOT NULL, system TEXT, code TEXT, unit TEXT
);
CREATE INDEX IF NOT EXISTS idx_quantity_value ON idx_quantity (param, res_type, value);
CREATE INDEX IF NOT EXISTS idx_quantity_rid ON idx_quantity (rid);
CREATE TABLE IF NOT EXISTS idx_uri (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL, value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_uri_value ON idx_uri (param, res_type, value);
CREATE INDEX IF NOT EXISTS idx_uri_rid ON idx_uri (rid);
"""


def ddl(dialect: str) -> list[str]:
    """The schema's statements for one dialect, in order."""
    text = _DDL.format(**_TYPES[dialect])
    return [s.strip() for s in text.split(";") if s.strip()]
