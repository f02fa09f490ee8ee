"""HL7 v2 over HTTP (``POST /hl7v2``) and the EHR quarantine (``GET /fhir/$quarantine``).

Routes only: parse, call one function of :mod:`server.fhir.operations.ingest_hl7` or
:mod:`server.fhir.operations.quarantine`, serialise.

``POST /hl7v2`` takes one or more ER7-encoded messages (HL7 v2.5.1 chapter 2; ``application/hl7-v2``,
``x-application/hl7-v2+er7``, ``application/hl7-v2+er7`` or ``text/plain``): segments ended by CR,
CRLF or LF, optionally MLLP-framed (appendix C) or wrapped in FHS/BHS batch segments. Each
message's resources are stored atomically; the answer (``200``, ``x-application/hl7-v2+er7``) holds
one original-mode ACK per message, in order (chapter 2.9): ``MSA|AA`` stored (or a duplicate of a
stored message), ``MSA|AE``/``MSA|AR`` with an ERR segment saying what and where. A malformed message
never stops the others. An MLLP-framed request gets MLLP-framed ACKs. The request's AuditEvent
(:mod:`server.api.audit`) lists the control id of every stored message and the Patients they were
about (one event per patient, so ``AuditEvent?patient=`` finds each). A body that holds no
message at all, or the wrong media type, gets a 400/415 OperationOutcome like every error.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, request

from server.api import audit as audit_api
from server.api.http import ctx, fhir_base, fhir_response, negotiate
from server.auth.access import current_access, require
from server.errors import BadRequest, Forbidden, UnsupportedMediaType
from server.fhir.operations.ingest_hl7 import ingest_hl7
from server.fhir.operations.quarantine import quarantine_bundle

__all__ = ["ER7", "bp"]

bp = Blueprint("hl7v2", __name__)

ER7 = "x-application/hl7-v2+er7"
_TYPES = ("application/hl7-v2", "x-application/hl7-v2+er7", "application/hl7-v2+er7", "text/plain")
_MLLP_START, _MLLP_END = "\x0b", "\x1c\r"
#: what an HL7 v2 feed writes (create and update), and what the quarantine shows (patients' records)
_WRITTEN = ("Patient", "Encounter", "Practitioner", "Observation", "DiagnosticReport", "Specimen")
#: AuditEvent entity system of an HL7 v2 message, by its control id (MSH-10)
HL7_MESSAGE = "urn:bigmed:hl7v2-message-control-id"


def _stored_control_ids(acks: list[str]) -> list[str]:
    """Control ids (MSA-2) of the messages acknowledged ``AA`` (stored, or a duplicate of a stored one)."""
    out = []
    for ack in acks:
        for segment in ack.replace("\n", "\r").split("\r"):
            fields = segment.split("|")
            if fields[0] == "MSA" and len(fields) > 2 and fields[1] == "AA" and fields[2]:
                out.append(fields[2])
    return out


def _not_patient_level(what: str) -> None:
    if current_access().patient is not None:
        raise Forbidden(f"{what} spans many patients: a patient-level access token cannot use it")


@bp.post("/hl7v2")
def receive() -> Response:
    """Store the messages of the body; answer one ACK per message."""
    _not_patient_level("POST /hl7v2")
    for type_ in _WRITTEN:
        require(type_, "cu")
    if (request.mimetype or "").lower() not in _TYPES:
        got = request.content_type or "no Content-Type"
        raise UnsupportedMediaType(f"POST /hl7v2 takes HL7 v2 ER7 messages ({', '.join(_TYPES)}), not {got}")
    data = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    if not data.strip(b" \t\r\n\x0b\x1c\x00"):
        raise BadRequest("The request body holds no HL7 v2 message")
    charset = request.mimetype_params.get("charset")
    body: bytes | str = data
    if charset:
        try:
            body = data.decode(charset)
        except (LookupError, UnicodeDecodeError) as exc:
            raise BadRequest(f"The body is not {charset}: {exc}") from exc
    source = f"POST /hl7v2 {datetime.now(UTC).isoformat(timespec='milliseconds')}"
    report = ingest_hl7(ctx(), [(source, body)], acks=True)
    if not report.acks:
        raise BadRequest("The request body holds no HL7 v2 message")
    audit_api.note(
        patients=sorted(report.patients),
        identifiers=[(HL7_MESSAGE, ctrl) for ctrl in _stored_control_ids(report.acks)],
    )
    framed = data.lstrip(b" \t\r\n")[:1] == b"\x0b"
    text = "".join(f"{_MLLP_START}{a}{_MLLP_END}" if framed else a for a in report.acks)
    return Response(text.encode("utf-8"), 200, content_type=f"{ER7}; charset=utf-8")


@bp.get("/fhir/$quarantine")
def quarantine() -> Response:
    """The quarantined EHR records, newest first (see :mod:`server.fhir.operations.quarantine`)."""
    media = negotiate()
    _not_patient_level("$quarantine")
    require("Patient", "rs")
    return fhir_response(quarantine_bundle(ctx(), fhir_base(), request.args.to_dict()), media=media)
