"""Database schema, shared by SQLite and PostgreSQL, and its migration at start-up.

Tables (one DDL text, rendered per dialect):

``resources``  the current version of each resource: ``rid`` (surrogate key), ``res_type``,
               ``res_id``, ``version``, ``ts`` (lastUpdated, UTC epoch seconds), ``deleted``.
``history``    every version, ``seq`` ordered: ``rid``, ``res_type``, ``res_id``, ``version``,
               ``ts``, ``deleted``, ``method``, ``content`` (the JSON served: the exact bytes
               compressed as a zstd frame by :mod:`server.store.content`, BLOB/BYTEA, or plain
               JSON in rows written before it; NULL for a delete tombstone), ``raw`` (unused
               since schema version 3: PostgreSQL kept JSONB content before, with the exact
               bytes here where JSONB would print a number differently; the migration folds
               them into ``content``). The current content is read by joining ``resources`` to
               ``history`` on (rid, version), so it is written once.
``idx_token``, ``idx_string``, ``idx_reference``, ``idx_date``, ``idx_number``,
``idx_quantity``, ``idx_uri``
               one search index table per search-parameter type
               (http://hl7.org/fhir/R4/search.html#ptypes), keyed by (param, res_type,
               normalised value, rid), holding rows for current, non-deleted versions only:

               token      system, code, text (display/text, normalised like string
                          values: for ``:text``)
               string     value (lower-cased, accents stripped), exact (as written)
               reference  target_type, target_id, url (the reference as written)
               date       low, high: half-open UTC epoch interval [low, high)
               number     value
               quantity   value, system, code, unit
               uri        value

               Every index table also has ``grp`` (NULL for ordinary rows). It ties together
               the component rows of one composite value (search.html#composite): a composite
               parameter ``P`` whose expression selects items (``Observation.component``) gets,
               for the n-th item, the rows of its k-th component in that component's table
               under param ``P:k`` with ``grp`` = n. ``component-code-value-quantity=…$gt10``
               is then a join of an ``idx_token`` row (``component-code-value-quantity:0``) and
               an ``idx_quantity`` row (``…:1``) on (rid, grp): both components must match on
               the same item, as the spec requires. (A composite whose one item is the resource
               and whose components are other parameters' values, ``code-value-quantity``, has
               no rows: it is searched through those parameters, ``extract.root_composites``.)
               Two other derived params live in ``idx_token``: ``P:of-type`` (Identifier.type
               coding as system/code, code being ``typecode|value``, for ``:of-type``) and, under
               the reference parameter's own code, Reference.identifier (for ``:identifier``).

Text columns that are compared by range or sorted use byte order on both backends (SQLite's
default BINARY, ``COLLATE "C"`` on PostgreSQL), so prefix searches, ``:contains`` and
``_sort`` give identical answers on both. Value indexes end with ``rid, grp`` so that the
``rid IN (SELECT rid FROM idx_… WHERE …)`` subqueries of :mod:`server.search.query` (and the
first component of a composite) are answered from the index alone; ``idx_token_value`` has
``rid`` right after ``code`` (then ``system, grp``), so the entries of one code, with or without
its system, come in ``rid`` order and a page in that order reads only its own entries. ``(rid,
param, grp, <sort column>)`` indexes serve deletes, composite joins and, from the index alone,
``_sort`` keys; ``idx_date_high`` serves ``gt``/``ge`` (``high > …``). Reference rows have no
index by target alone (schema 4 dropped ``idx_reference_target``: a reference row cost 11 % more
SQL to write with it): every reading site names the parameter, and ``_revinclude`` of every
parameter (``*``, ``Type:*``) asks ``idx_reference_value`` once per source type with that type's
reference parameters (:func:`server.search.query.revinclude_sql`). On PostgreSQL,
multi-column statistics (``_PG_STATISTICS``) keep the row estimates of these correlated columns
sane.

``variant_range`` the genomic range index (a derived index, see ``base.DerivedIndex``): one row
               per current variant Observation (Genomics Reporting ``variant`` profile), filled
               by :mod:`server.fhir.operations.variant_ranges`: ``rid``, ``subject``
               (``Patient/id``), ``ref_seq`` (RefSeq ``NC_`` accession), ``start_pos``,
               ``end_pos`` (0-based half-open interval), ``bin`` (UCSC binning scheme: the
               smallest of the 128 kb / 1 Mb / 8 Mb / 64 Mb / 512 Mb bins holding the interval),
               ``ref_allele``, ``alt_allele`` (NULL for symbolic alleles), ``structural`` (1 when
               the variant has no REF/ALT sequence: symbolic, breakend, copy number),
               ``source_class`` (``germline``/``somatic``). An overlap query reads, per bin level,
               only the bins the query interval touches (``(subject, ref_seq, bin, start_pos)``
               index), so its cost does not grow with the number of variants of the subject;
               ``(ref_seq, start_pos)`` serves lookups of one variant across subjects.
               ``implied`` (schema 5) 1 when the row stands for index rows that were not written
               (the VCF ingestion's variants: their ``derived-from`` row to the MolecularSequence
               of the same id, :mod:`server.search.implied`); 0 for every other write.

``ehr_message`` the EHR message log (:mod:`server.fhir.operations.ehr_store`): one row per stored
               HL7 v2 message, ``msg_key`` (sender and MSH-10 control id), ``digest`` (SHA-256 of
               the message text), ``ts``; the same message again is recognised and changes nothing.
``ehr_quarantine`` every EHR record that did not become FHIR: ``qid``, ``ts``, ``kind``
               (``hl7v2``/``csv``), ``source`` (file or request), ``record`` (message index or CSV
               line), ``control_id``, ``message_type``, ``location`` (``PID-3[1]``, a column),
               ``reason``, ``code`` (HL7 table 0357), ``raw`` (the record as received); read by
               ``GET /fhir/$quarantine`` (:mod:`server.fhir.operations.quarantine`).

``auth_client`` the SMART client registry (:mod:`server.auth.clients`): ``client_id``, ``jwks`` (a
               registered JWK Set, JSON) or ``jwks_url``, ``scopes`` (the most it may be granted),
               ``patient`` (patient-level clients), ``status`` (``active``/``revoked``), ``created``,
               ``revoked``, ``purpose`` (``treatment`` or ``research``: research clients never see
               patients who denied research use).
``auth_key``   the server's token signing keys (:mod:`server.auth.keys`): ``kid``, ``alg``,
               ``private_pem``, ``created``.
``audit_event`` the audit trail (:mod:`server.audit`), append-only: ``aid``, ``ts``, ``agent``
               (client id), ``patient`` (id, NULL when none), ``action`` (C R U D E),
               ``outcome`` (FHIR AuditEvent outcome code), ``content`` (the AuditEvent JSON).

``type_gen``   a generation counter per resource type, moved by every commit that writes the
               type (server/cache.py keys cached answers by it; never reset).
``schema_meta`` one row: the schema version; the store's migration at start-up brings any older
database up (columns listed in ``ADDED_COLUMNS`` are added to tables created before them, indexes
listed in ``REBUILT_INDEXES`` for a later version are dropped, and built again when the schema still
defines them).
"""

from __future__ import annotations

__all__ = ["ADDED_COLUMNS", "REBUILT_INDEXES", "SCHEMA_VERSION", "ddl", "rebuilt_indexes"]

SCHEMA_VERSION = 5

#: Indexes whose definition changed, or that were removed, in a schema version: migrating a database
#: from an older version drops them before the indexes are created (``CREATE INDEX IF NOT EXISTS``
#: keeps an index of that name as it is). 2: ``idx_token_value`` puts ``rid`` before ``system``. (3
#: changed no index: PostgreSQL's ``history.content`` became BYTEA, see
#: ``PostgresStore._content_to_bytea``.) 4: ``idx_reference_target`` removed (module docstring).
#: (5 changed no index: ``variant_range.implied`` was added, see ``ADDED_COLUMNS``.)
REBUILT_INDEXES: dict[int, tuple[str, ...]] = {2: ("idx_token_value",), 4: ("idx_reference_target",)}

_TYPES = {
    "sqlite": {
        "pk": "INTEGER PRIMARY KEY",
        "json": "BLOB",
        "blob": "BLOB",
        "real": "REAL",
        "num": "REAL",
        "bigint": "INTEGER",
        "text": "TEXT",
    },
    "postgresql": {
        "pk": "BIGSERIAL PRIMARY KEY",
        "json": "BYTEA",
        "blob": "BYTEA",
        "real": "DOUBLE PRECISION",
        "num": "NUMERIC",
        "bigint": "BIGINT",
        # byte order, as SQLite's BINARY: prefix ranges, LIKE and _sort agree on both backends
        "text": 'TEXT COLLATE "C"',
    },
}

_DDL = """
CREATE TABLE IF NOT EXISTS schema_meta (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS type_gen (res_type TEXT PRIMARY KEY, gen {bigint} NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    rid {pk},
    res_type TEXT NOT NULL,
    res_id {text} NOT NULL,
    version INTEGER NOT NULL,
    ts {real} NOT NULL,
    deleted SMALLINT NOT NULL DEFAULT 0,
    UNIQUE (res_type, res_id)
);
CREATE INDEX IF NOT EXISTS resources_type_ts ON resources (res_type, ts);
CREATE INDEX IF NOT EXISTS resources_type_rid ON resources (res_type, rid);
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
    system {text}, code {text}, text {text}, grp INTEGER
);
CREATE INDEX IF NOT EXISTS idx_token_value ON idx_token (param, res_type, code, rid, system, grp);
CREATE INDEX IF NOT EXISTS idx_token_rid ON idx_token (rid, param, grp, code);
CREATE TABLE IF NOT EXISTS idx_string (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL,
    value {text} NOT NULL, exact {text} NOT NULL, grp INTEGER
);
CREATE INDEX IF NOT EXISTS idx_string_value ON idx_string (param, res_type, value, rid, grp);
CREATE INDEX IF NOT EXISTS idx_string_rid ON idx_string (rid, param, grp, value);
CREATE TABLE IF NOT EXISTS idx_reference (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL,
    target_type TEXT, target_id {text}, url {text} NOT NULL, grp INTEGER
);
CREATE INDEX IF NOT EXISTS idx_reference_value ON idx_reference (param, res_type, target_id, target_type, rid, grp);
CREATE INDEX IF NOT EXISTS idx_reference_rid ON idx_reference (rid, param, grp, url);
CREATE TABLE IF NOT EXISTS idx_date (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL,
    low {real} NOT NULL, high {real} NOT NULL, grp INTEGER
);
CREATE INDEX IF NOT EXISTS idx_date_value ON idx_date (param, res_type, low, high, rid, grp);
CREATE INDEX IF NOT EXISTS idx_date_high ON idx_date (param, res_type, high, low, rid);
CREATE INDEX IF NOT EXISTS idx_date_rid ON idx_date (rid, param, grp, low, high);
CREATE TABLE IF NOT EXISTS idx_number (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL, value {num} NOT NULL, grp INTEGER
);
CREATE INDEX IF NOT EXISTS idx_number_value ON idx_number (param, res_type, value, rid, grp);
CREATE INDEX IF NOT EXISTS idx_number_rid ON idx_number (rid, param, grp, value);
CREATE TABLE IF NOT EXISTS idx_quantity (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL,
    value {num} NOT NULL, system {text}, code {text}, unit {text}, grp INTEGER
);
CREATE INDEX IF NOT EXISTS idx_quantity_value ON idx_quantity (param, res_type, value, rid, grp);
CREATE INDEX IF NOT EXISTS idx_quantity_rid ON idx_quantity (rid, param, grp, value);
CREATE TABLE IF NOT EXISTS idx_uri (
    rid {bigint} NOT NULL, res_type TEXT NOT NULL, param TEXT NOT NULL, value {text} NOT NULL, grp INTEGER
);
CREATE INDEX IF NOT EXISTS idx_uri_value ON idx_uri (param, res_type, value, rid, grp);
CREATE INDEX IF NOT EXISTS idx_uri_rid ON idx_uri (rid, param, grp, value);
CREATE TABLE IF NOT EXISTS variant_range (
    rid {bigint} NOT NULL, subject {text} NOT NULL, ref_seq {text} NOT NULL,
    start_pos {bigint} NOT NULL, end_pos {bigint} NOT NULL, bin INTEGER NOT NULL,
    ref_allele {text}, alt_allele {text}, structural SMALLINT NOT NULL, source_class TEXT,
    implied SMALLINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS variant_range_subject ON variant_range (subject, ref_seq, bin, start_pos);
CREATE INDEX IF NOT EXISTS variant_range_position ON variant_range (ref_seq, start_pos);
CREATE INDEX IF NOT EXISTS variant_range_rid ON variant_range (rid);
CREATE TABLE IF NOT EXISTS ehr_message (msg_key {text} PRIMARY KEY, digest TEXT NOT NULL, ts {real} NOT NULL);
CREATE TABLE IF NOT EXISTS ehr_quarantine (
    qid {pk}, ts {real} NOT NULL, kind TEXT NOT NULL, source {text} NOT NULL, record INTEGER,
    control_id {text}, message_type TEXT, location TEXT, reason TEXT NOT NULL, code TEXT, raw TEXT
);
CREATE INDEX IF NOT EXISTS ehr_quarantine_ts ON ehr_quarantine (ts);
CREATE INDEX IF NOT EXISTS ehr_quarantine_source ON ehr_quarantine (source, ts);
CREATE TABLE IF NOT EXISTS auth_client (
    client_id {text} PRIMARY KEY, jwks TEXT, jwks_url TEXT, scopes TEXT NOT NULL, patient {text},
    status TEXT NOT NULL, created {real} NOT NULL, revoked {real},
    purpose TEXT NOT NULL DEFAULT 'treatment'
);
CREATE TABLE IF NOT EXISTS auth_key (
    kid {text} PRIMARY KEY, alg TEXT NOT NULL, private_pem TEXT NOT NULL, created {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_event (
    aid {pk}, ts {real} NOT NULL, agent {text} NOT NULL, patient {text}, action TEXT NOT NULL,
    outcome TEXT NOT NULL, content TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_event_ts ON audit_event (ts);
CREATE INDEX IF NOT EXISTS audit_event_patient ON audit_event (patient, ts);
CREATE INDEX IF NOT EXISTS audit_event_agent ON audit_event (agent, ts);
"""

#: Columns added after the first release, as (table, column, SQL type): a database created
#: before them gets them at start-up (``ALTER TABLE … ADD COLUMN``), before the indexes are made.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    *((f"idx_{t}", "grp", "INTEGER") for t in ("token", "string", "reference", "date", "number", "quantity", "uri")),
    ("variant_range", "implied", "SMALLINT NOT NULL DEFAULT 0"),  # schema 5
)


#: PostgreSQL only: multi-column statistics. The planner otherwise multiplies the selectivities of
#: param, res_type and code as if independent (they are not: ``gender`` rows are all of one type)
#: and, estimating 1 row where there are thousands, nests subqueries it should hash.
_PG_STATISTICS = """
CREATE STATISTICS IF NOT EXISTS idx_token_stats (dependencies, mcv) ON param, res_type, code FROM idx_token;
CREATE STATISTICS IF NOT EXISTS idx_reference_stats (dependencies, mcv)
    ON param, res_type, target_type FROM idx_reference;
CREATE STATISTICS IF NOT EXISTS idx_string_stats (dependencies, mcv) ON param, res_type FROM idx_string;
CREATE STATISTICS IF NOT EXISTS idx_date_stats (dependencies, mcv) ON param, res_type FROM idx_date;
CREATE STATISTICS IF NOT EXISTS idx_number_stats (dependencies, mcv) ON param, res_type FROM idx_number;
CREATE STATISTICS IF NOT EXISTS idx_quantity_stats (dependencies, mcv) ON param, res_type FROM idx_quantity;
CREATE STATISTICS IF NOT EXISTS idx_uri_stats (dependencies, mcv) ON param, res_type FROM idx_uri;
"""


def rebuilt_indexes(version: int) -> list[str]:
    """Indexes a database at schema ``version`` has with an outdated definition."""
    return [name for v, names in sorted(REBUILT_INDEXES.items()) if v > version for name in names]


def ddl(dialect: str) -> list[str]:
    """The schema's statements for one dialect, in order."""
    text = _DDL.format(**_TYPES[dialect]) + (_PG_STATISTICS if dialect == "postgresql" else "")
    return [s.strip() for s in text.split(";") if s.strip()]
