"""Bearer tokens, two scopes: admin (API_KEY: retrain, datasets, activate, cancel)
and predict (PREDICT_API_KEY, optional). Keys are compared in constant time and
never logged."""

from __future__ import annotations

import hmac

from flask import request

from tpotserve.errors import NotConfigured, Unauthorized
from tpotserve.settings import Settings


def _bearer_token() -> str | None:
    """The bearer token, or a Basic password (browsers can only prompt for Basic)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if scheme.lower() == "basic" and request.authorization is not None:
        return request.authorization.password or None
    return None


def _matches(token: str, key) -> bool:  # noqa: ANN001 - a SecretStr or None
    # Constant-time compare: a timing side channel must not reveal the key.
    return key is not None and hmac.compare_digest(token.encode(), key.get_secret_value().encode())


def require_predict(settings: Settings) -> None:
    """With PREDICT_API_KEY set, /predict needs it (or the admin key); otherwise it is open."""
    if settings.predict_api_key is None:
        return
    token = _bearer_token()
    if token is None:
        raise Unauthorized("send 'Authorization: Bearer <PREDICT_API_KEY>'")
    if not (_matches(token, settings.predict_api_key) or _matches(token, settings.api_key)):
        raise Unauthorized("the API key is not valid")


def require_admin(settings: Settings) -> None:
    """Raise unless the request carries ``Authorization: Bearer <API_KEY>``.

    With no API_KEY configured, write endpoints are closed (503), never open.
    """
    if settings.api_key is None:
        raise NotConfigured("write endpoints are disabled: the server has no API_KEY configured")
    token = _bearer_token()
    if token is None:
        raise Unauthorized("send 'Authorization: Bearer <API_KEY>'")
    # The predict key is a different scope: it never opens an admin endpoint.
    if not _matches(token, settings.api_key):
        raise Unauthorized("the API key is not valid")
