"""Bearer-token check for write endpoints (retrain, activate)."""

from __future__ import annotations

import hmac

from flask import request

from tpotserve.errors import NotConfigured, Unauthorized
from tpotserve.settings import Settings


def require_admin(settings: Settings) -> None:
    """Raise unless the request carries ``Authorization: Bearer <API_KEY>``.

    With no API_KEY configured, write endpoints are closed (503), never open.
    """
    if settings.api_key is None:
        raise NotConfigured("write endpoints are disabled: the server has no API_KEY configured")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send 'Authorization: Bearer <API_KEY>'")
    # Constant-time compare: a timing side channel must not reveal the key.
    if not hmac.compare_digest(token.strip().encode(), settings.api_key.get_secret_value().encode()):
        raise Unauthorized("the API key is not valid")
