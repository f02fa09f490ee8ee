"""Spec-driven search (http://hl7.org/fhir/R4/search.html).

``registry`` holds the SearchParameter definitions (official R4 + ``profiles/``) and the R4 type
model; ``extract`` turns a resource into index rows by compiling each parameter's FHIRPath
expression; ``query`` turns a parsed search into SQL over the index tables; ``compartments``
holds the R4 CompartmentDefinitions (compartment search); ``reindex`` rebuilds the index rows
from the stored resources. Nothing here names a resource type: behaviour follows the parameter
``type`` and ``expression``.
"""
