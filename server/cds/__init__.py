"""CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/): discovery, request handling, prefetch, JWT, feedback.

- :mod:`server.cds.model` — services, the hook call a service sees, card building (#cds-service-response);
- :mod:`server.cds.registry` — the services offered and the discovery document (#discovery);
- :mod:`server.cds.hooks` — validating a hook request and answering it (#calling-a-cds-service);
- :mod:`server.cds.prefetch` — prefetch templates, what the client sent, fetching the rest (#prefetch);
- :mod:`server.cds.patient` — reading the patient's genomic and clinical data out of FHIR JSON;
- :mod:`server.cds.feedback` — storing and querying card feedback (#feedback);
- :mod:`server.cds.jwt` — verifying the client's JWT (#trusting-cds-clients);
- :mod:`server.cds.services` — one module per service.

The HTTP layer is :mod:`server.api.cds` (``/cds-services``).
"""
