"""The FHIR interactions, one module each (http://hl7.org/fhir/R4/http.html)."""
