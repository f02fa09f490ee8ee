"""Conformance artefacts (StructureDefinitions, SearchParameters we publish) and the validator.

``profiles.validate`` checks R4 JSON resources against the official R4 StructureDefinitions
(http://hl7.org/fhir/R4/validation.html), compiled by ``scripts/gen_r4_definitions.py`` into
``profiles/data/r4-definitions.json.gz``. This package imports nothing from ``server``.
"""
