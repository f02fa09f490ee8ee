"""One module per CDS service: :mod:`.pgx` (pgx-order-select, pgx-order-sign), :mod:`.genomic_findings`
(patient-view) and :mod:`.qt_risk` (qt-risk-order-select, qt-risk). Each exposes ``SERVICES``."""
