"""FHIR operations (http://hl7.org/fhir/R4/operations.html): one module per operation family.

- :mod:`.ingest_vcf` — ``$ingest-vcf`` on a Patient (and ``python -m server ingest-vcf``): one
  sample of a VCF mapped by :mod:`mappers.vcf` to HL7 Genomics Reporting resources and stored in
  one transaction, with its lean search index and the genomic range index.
- :mod:`.genomics` — the Genomics Reporting STU3 operations
  (https://hl7.org/fhir/uv/genomics-reporting/STU3/operations.html): ``$find-subject-variants``,
  ``$find-subject-specific-variants``, ``$find-subject-structural-intersecting-variants``,
  ``$find-subject-haplotypes``, ``$find-subject-tx-implications``,
  ``$find-subject-dx-implications``, ``$find-population-specific-variants``.
- :mod:`.ingest_hl7`, :mod:`.ingest_csv` — HL7 v2 feeds (``POST /hl7v2``, ``python -m server
  ingest-hl7``) and CSV extracts (``ingest-csv``) stored one transaction per record through
  :mod:`.ehr_store` (bulk transaction rules, message log, quarantine table);
  :mod:`.quarantine` — ``GET /fhir/$quarantine``, what did not become FHIR.
- :mod:`.variant_ranges` — the ``variant_range`` table those operations read (a derived index the
  store keeps in step with every write of a variant Observation).
"""
