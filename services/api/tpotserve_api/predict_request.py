"""The body of a prediction, validated: JSON parsing, the book's object and batches
(``POST /predict``), and the range warnings. Only the API reads prediction bodies; the
V2 adapter (``tpotserve_api.v2``) shares the JSON parser and the magnitude bound.

Predictions are validated against the current model's feature schema (its meta.json's
``features``, written with :func:`tpotserve.schema.feature_schema`).
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from itertools import chain
from typing import Any

from tpotserve.errors import InvalidInput, MalformedBody

from .limits import MAX_MAGNITUDE

try:  # pinned in requirements.lock; without it the standard library parses every body
    import orjson
except ImportError:  # pragma: no cover
    orjson = None


# --- JSON bodies -----------------------------------------------------------
def _reject_constant(name: str) -> float:
    # Python's json accepts NaN and Infinity; JSON does not, and a model cannot use them.
    raise InvalidInput(f"{name} is not a finite number", field=None)


# orjson reads integer literals beyond 64 bits as floats where json reads ints: a body
# with a run of 19 or more digits goes to json alone (found with one C-speed translate).
_DIGITS_AS_NINES = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGIT_RUN = b"9" * 19


def _digit_runs(raw: bytes) -> bytes:
    """``raw`` with every digit as 9 and everything else as a space."""
    return raw.translate(_DIGITS_AS_NINES)


def parse_json(raw: bytes) -> Any:
    """Parse a request body strictly: no NaN/Infinity, no pathological nesting.

    orjson parses first (4x faster on a 10,000-row batch); on anything it refuses
    (NaN, 1e999, invalid UTF-8, deep nesting, any malformed body) the standard
    parser reads the body instead, so every refusal and its message come from one
    parser, whichever path a body takes.
    """
    if not raw:
        raise MalformedBody("the request body is empty; send a JSON object")
    if orjson is not None and isinstance(raw, bytes) and _LONG_DIGIT_RUN not in _digit_runs(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # json below finds the same problem and words the error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody("the request body is not UTF-8") from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise MalformedBody("the JSON body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from exc


# --- predictions -----------------------------------------------------------
@dataclass(frozen=True)
class PredictRequest:
    """A validated predict body: rows in the model's feature order."""

    rows: list[list[float]]
    single: bool
    """True for the book's one-object form, which gets the book's answer keys."""
    originals: list[dict[str, Any]]


def parse_predict(body: Any, feature_names: list[str], max_rows: int, *, shortcut: bool = True) -> PredictRequest:
    """Validate the book's single object or ``{"instances": [...]}`` against the schema.

    ``shortcut`` False: every row value by value (``_row``), which the shortcut for plain
    rows (``_plain_rows``) must equal in rows, types and errors; its tests compare the two."""
    plain = _plain_rows if shortcut else _never_plain
    if not isinstance(body, dict):
        raise InvalidInput(
            "the body must be a JSON object: one instance, or {\"instances\": [...]}",
            field=None,
        )
    if "instances" in body and "instances" not in feature_names:
        extra = sorted(set(body) - {"instances"})
        if extra:
            raise InvalidInput(f"unknown key {extra[0]!r} beside 'instances'", field=extra[0])
        instances = body["instances"]
        if not isinstance(instances, list):
            raise InvalidInput("'instances' must be a list of objects", field="instances")
        if not instances:
            raise InvalidInput("'instances' is empty", field="instances")
        if len(instances) > max_rows:
            raise InvalidInput(
                f"'instances' has {len(instances)} rows; the limit is {max_rows}", field="instances"
            )
        rows = plain(instances, feature_names)
        if rows is None:  # something is wrong: _row finds the first problem and names its field
            rows = [
                _row(item, feature_names, prefix=f"instances[{i}].") for i, item in enumerate(instances)
            ]
        return PredictRequest(rows=rows, single=False, originals=instances)
    rows = plain([body], feature_names) or [_row(body, feature_names, prefix="")]
    return PredictRequest(rows=rows, single=True, originals=[body])


def _never_plain(instances: list[Any], feature_names: list[str]) -> None:
    return None


FAR_OUTSIDE = 0.5
"""A value is reported when it lies beyond the training range by more than this share of the range."""


def range_warnings(rows: list[list[float]], features: list[dict[str, Any]], *, single: bool) -> list[dict[str, Any]]:
    """Values far outside what the model saw in training: reported, never refused."""
    if _all_within_range(rows, features):
        return []
    return value_by_value_range_warnings(rows, features, single=single)


def value_by_value_range_warnings(rows: list[list[float]], features: list[dict[str, Any]], *,
                                  single: bool) -> list[dict[str, Any]]:
    """``range_warnings`` without its column-wise shortcut (which must never hide one; its tests compare)."""
    warnings = []
    for index, row in enumerate(rows):
        for value, feature in zip(row, features):
            low, high = feature.get("min"), feature.get("max")
            if low is None or high is None:
                continue
            margin = FAR_OUTSIDE * (high - low)
            if value < low - margin or value > high + margin:
                name = feature["name"] if single else f"instances[{index}].{feature['name']}"
                warnings.append(
                    {
                        "code": "outside_training_range",
                        "field": name,
                        "message": f"{value} is far outside the training range [{low}, {high}]",
                    }
                )
    return warnings




def _all_within_range(rows: list[list[float]], features: list[dict[str, Any]]) -> bool:
    """True when range_warnings has nothing to report, found column by column with min/max
    (C loops) instead of one Python comparison per value. False means: look value by value."""
    width = len(features)
    if not rows or set(map(len, rows)) != {width}:
        return not rows
    for column, feature in zip(zip(*rows), features):
        low, high = feature.get("min"), feature.get("max")
        if low is None or high is None:
            continue
        margin = FAR_OUTSIDE * (high - low)
        smallest, largest = min(column), max(column)
        if smallest != smallest or largest != largest:  # NaN first in the column hides the rest
            return False
        if smallest < low - margin or largest > high + margin:
            return False
    return True


def _plain_rows(items: list[Any], feature_names: list[str]) -> list[list[float]] | None:
    """Rows for instances that are exactly right, checked in C loops, not value by value.

    Every instance a plain dict with exactly the model's features (as many keys as
    features, and each feature found: so no other key); every value a plain float or
    int (never bool); no value NaN or infinite (one sum: any such value makes it
    non-finite). None at the first doubt: then _row checks value by value and raises
    the error, with its message and field, so an answer never depends on this shortcut.
    """
    width = len(feature_names)
    if width == 0 or len(set(feature_names)) != width:
        return None
    if set(map(type, items)) != {dict} or set(map(len, items)) != {width}:
        return None
    get = operator.itemgetter(*feature_names)
    try:
        picked = list(map(get, items))
    except KeyError:
        return None
    if width == 1:
        picked = [(value,) for value in picked]
    values = list(chain.from_iterable(picked))
    kinds = set(map(type, values))
    if not kinds <= {float, int}:
        return None  # bool, str, None, lists... (bool is its own type, not int, here)
    if int in kinds:
        try:
            values = list(map(float, values))
        except OverflowError:  # a JSON integer with hundreds of digits
            return None
        picked = [values[start : start + width] for start in range(0, len(values), width)]
    if not math.isfinite(sum(values)) or max(map(abs, values)) > MAX_MAGNITUDE:
        return None  # NaN, infinity or a huge value somewhere: _row names it
    return list(map(list, picked))


def _row(item: Any, feature_names: list[str], prefix: str) -> list[float]:
    if not isinstance(item, dict):
        raise InvalidInput("each instance must be a JSON object", field=prefix.rstrip(".") or None)
    for key in item:
        if key not in feature_names:
            raise InvalidInput(
                f"unknown feature {key!r}; the model expects {feature_names}", field=prefix + key
            )
    row = []
    for name in feature_names:
        if name not in item:
            raise InvalidInput(f"missing feature {name!r}", field=prefix + name)
        value = item[name]
        # bool is an int in Python; True is not a measurement.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(
                f"feature {name!r} must be a number, got {type(value).__name__}",
                field=prefix + name,
            )
        try:
            value = float(value)
        except OverflowError:  # a JSON integer with hundreds of digits
            value = math.inf
        if not math.isfinite(value):
            raise InvalidInput(f"feature {name!r} must be a finite number", field=prefix + name)
        if abs(value) > MAX_MAGNITUDE:
            raise InvalidInput(
                f"feature {name!r} is {value:g}; values must lie within ±{MAX_MAGNITUDE:g}", field=prefix + name
            )
        row.append(value)
    return row
