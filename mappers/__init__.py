"""Pure translations into FHIR (VCF, HL7 v2, CSV); never imports ``server``."""
