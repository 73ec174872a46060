"""Domain errors -> JSON HTTP answers: one table, one handler.

Every error the API sends has the shape
``{"error": {"code": ..., "message": ..., "field": ...}}``, except under ``/v2``, where the
Open Inference Protocol's is ``{"error": "<message>"}`` and a bad request is a 400. Anything not in
the table is a bug on our side: it is logged with its traceback and answered
with a generic 500 that leaks nothing.
"""

from __future__ import annotations

import logging

from flask import Response, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from tpotserve import errors as domain

log = logging.getLogger(__name__)

# Checked in order: subclasses before their bases.
STATUS_BY_ERROR: list[tuple[type[domain.TpotServeError], int]] = [
    (domain.MalformedBody, 400),
    (domain.UnsupportedMedia, 415),
    (domain.PayloadTooLarge, 413),
    (domain.InvalidInput, 422),
    (domain.Unauthorized, 401),
    (domain.NotFound, 404),
    (domain.Conflict, 409),
    (domain.ModelNotReady, 503),
    (domain.QueueUnavailable, 503),
    (domain.NotConfigured, 503),
    (domain.ArtifactRejected, 409),
    (domain.TrainingFailed, 500),
]

RETRY_AFTER_S = {domain.ModelNotReady: 5, domain.QueueUnavailable: 5}

# Werkzeug's own errors (routing, body size) get stable codes too.
HTTP_CODES = {
    400: "malformed_body",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str, field: str | None = None, **details: object) -> dict:
    return {"error": {"code": code, "message": message, "field": field, **details}}


def to_response(exc: BaseException) -> Response:
    """The one handler: any exception in, a JSON error response out."""
    response = _to_response(exc)
    if has_request_context() and (request.path == "/v2" or request.path.startswith("/v2/")):
        return _as_v2(response)
    return response


def _as_v2(response: Response) -> Response:
    """The same answer in the V2 protocol's shape: {"error": message}; 422 and 415 are 400 there."""
    error = (response.get_json(silent=True) or {}).get("error") or {}
    v2 = jsonify({"error": error.get("message") or "error"})
    v2.status_code = 400 if response.status_code in (415, 422) else response.status_code
    for header in ("Retry-After", "WWW-Authenticate", "Allow"):
        if header in response.headers:
            v2.headers[header] = response.headers[header]
    return v2


def _to_response(exc: BaseException) -> Response:
    if isinstance(exc, domain.TpotServeError):
        status = next(s for cls, s in STATUS_BY_ERROR if isinstance(exc, cls))
        response = jsonify(error_body(exc.code, exc.message, exc.field, **exc.details))
        response.status_code = status
        for cls, seconds in RETRY_AFTER_S.items():
            if isinstance(exc, cls):
                response.headers["Retry-After"] = str(seconds)
        if isinstance(exc, domain.Unauthorized):
            response.headers["WWW-Authenticate"] = 'Bearer realm="tpotserve"'
        return response
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = HTTP_CODES.get(status, "http_error")
        response = jsonify(error_body(code, exc.description or exc.name))
        response.status_code = status
        valid_methods = getattr(exc, "valid_methods", None)
        if status == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response
    log.exception("unhandled error", exc_info=exc)
    response = jsonify(error_body("internal_error", "an unexpected error occurred; it was logged"))
    response.status_code = 500
    return response
