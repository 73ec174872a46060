"""What may name a model: a path segment on disk and in URLs; and the data set store's file
names. Its own module, so the settings (which check MODEL_NAME) need not import the registry and
the store behind it, nor the backup the data set store (and pandas) for two file names."""

from __future__ import annotations

import re

from .errors import InvalidInput

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
RESERVED_NAMES = frozenset({"current"})
"""``/models/current`` is the default model's endpoint, so no model may be called that."""
_NAME = re.compile(MODEL_NAME_PATTERN)

DATASET_DATA_NAME = "data.csv"
DATASET_META_NAME = "meta.json"
"""A stored data set: ``<dataset dir>/<id>/data.csv`` and its ``meta.json``."""


def is_model_name(name: object) -> bool:
    return isinstance(name, str) and bool(_NAME.fullmatch(name)) and name not in RESERVED_NAMES


def check_model_name(name: object, field: str = "model") -> str:
    """``name`` if it can name a model."""
    if not is_model_name(name):
        shown = name[:100] if isinstance(name, str) else name
        raise InvalidInput(
            f"{shown!r} is not a model name: 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, and not 'current'",
            field=field,
        )
    return name  # type: ignore[return-value]
