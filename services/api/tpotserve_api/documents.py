"""A version's documents: its leaderboard and its model card.

The trainer computes both when it writes the version (they are part of the
immutable version, hashed in its meta.json); this module only reads and serves
them, so a request never re-scores or re-fits anything.
"""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask_restful import Resource

from tpotserve.errors import InvalidInput, NotFound

from . import dataplane

CARD_FORMATS = {"markdown": ("card.md", "text/markdown; charset=utf-8"),
                "json": ("card.json", "application/json")}


def _version(store: Any, version: str) -> str:
    """``current`` names the version the model's pointer names now."""
    if version != "current":
        return version
    pointer = store.read_pointer_quietly()
    if pointer is None:
        raise NotFound("this model has no current version", field="version")
    return pointer.version


def _answer(raw: bytes, mimetype: str, version: str) -> Response:
    response = Response(raw, mimetype=mimetype.split(";")[0])
    response.headers["Content-Type"] = mimetype
    response.headers["X-Model-Version"] = version
    # A version never changes once written: cache it, but not the "current" alias.
    response.headers["Cache-Control"] = "no-cache" if request.view_args.get("version") == "current" else (
        "public, max-age=86400, immutable")
    return response


class Leaderboard(Resource):
    """``GET /models/<name>/versions/<version>/leaderboard``: what the training tried, ranked."""

    def get(self, name: str, version: str) -> Response:
        store = dataplane.existing_store(name)
        version = _version(store, version)
        return _answer(store.read_document(version, "leaderboard.json"), "application/json", version)


class Card(Resource):
    """``GET /models/<name>/versions/<version>/card``: Markdown, or JSON with ``?format=json``
    or ``Accept: application/json``."""

    def get(self, name: str, version: str) -> Response:
        store = dataplane.existing_store(name)
        version = _version(store, version)
        document, mimetype = CARD_FORMATS[_card_format()]
        return _answer(store.read_document(version, document), mimetype, version)


def _card_format() -> str:
    asked = request.args.get("format")
    if asked is not None:
        if asked not in CARD_FORMATS:
            raise InvalidInput(f"format must be one of {sorted(CARD_FORMATS)}, got {asked[:50]!r}", field="format")
        return asked
    best = request.accept_mimetypes.best_match(["text/markdown", "application/json"], default="text/markdown")
    return "json" if best == "application/json" else "markdown"


def register(api: Any) -> None:
    api.add_resource(Leaderboard, "/models/<string:name>/versions/<string:version>/leaderboard")
    api.add_resource(Card, "/models/<string:name>/versions/<string:version>/card")

